// Requests over HTTP: by hash first (the text once, if the server does not know it), retried where safe.

export interface RetryOptions {
  attempts: number;
  firstDelayMs: number;
  maxDelayMs: number;
}
export const DEFAULT_RETRY: RetryOptions = { attempts: 6, firstDelayMs: 100, maxDelayMs: 2000 };

import { requestFor, type OperationName, type ResultOf, type VariablesOf } from "./operations.js";

export interface GraphQLErrorBody {
  message: string;
  extensions?: { code?: string; [key: string]: unknown };
}

/** The server refused the request itself (authentication, scope, a malformed request): retrying cannot help. */
export class StockwireError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
    readonly errors: GraphQLErrorBody[] = [],
  ) {
    super(message);
    this.name = "StockwireError";
  }
}

/** The request may or may not have reached the server, and every retry failed the same way. */
export class UnreachableError extends Error {
  constructor(message: string, readonly cause: unknown) {
    super(message);
    this.name = "UnreachableError";
  }
}

/** A lost request or answer, or a 5xx: the same idempotent request may be sent again. */
class Retryable extends Error {}

/** Error codes of a server (or its database) briefly unwell: the same request is worth sending again. */
export const RETRYABLE_CODES = new Set(["INTERNAL_SERVER_ERROR", "UNAVAILABLE"]);

export interface HttpOptions {
  url: string;
  apiKey?: string;
  byHash?: boolean;
  retry?: Partial<RetryOptions>;
  fetch?: typeof fetch;
  timeoutMs?: number;
}

export class HttpConnection {
  private readonly textNeeded = new Set<OperationName>();
  private readonly retry: RetryOptions;

  constructor(private readonly options: HttpOptions) {
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
  }

  /** An operation that is safe to repeat: retried with backoff on lost requests and 5xx answers. */
  async call<N extends OperationName>(name: N, variables: VariablesOf<N>): Promise<ResultOf<N>> {
    let delay = this.retry.firstDelayMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.execute(name, variables);
      } catch (error) {
        if (!(error instanceof Retryable)) throw error;
        if (attempt >= this.retry.attempts) {
          throw new UnreachableError(`${name}: gave up after ${attempt} attempts: ${error.message}`, error);
        }
        await sleep(delay * (0.5 + Math.random() / 2));
        delay = Math.min(delay * 2, this.retry.maxDelayMs);
      }
    }
  }

  /** One operation, once (plus the text, if the server did not know the hash). */
  async execute<N extends OperationName>(name: N, variables: VariablesOf<N>): Promise<ResultOf<N>> {
    const withText = this.options.byHash === false || this.textNeeded.has(name);
    try {
      return await this.send(name, variables, withText);
    } catch (error) {
      if (withText || !(error instanceof StockwireError) || error.code !== "PERSISTED_QUERY_NOT_FOUND") throw error;
    }
    this.textNeeded.add(name); // the server has no manifest (or an older one): the text from now on
    return this.send(name, variables, true);
  }

  private async send<N extends OperationName>(name: N, variables: VariablesOf<N>, withText: boolean): Promise<ResultOf<N>> {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      accept: "application/graphql-response+json, application/json",
    };
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    let response: Response;
    try {
      response = await (this.options.fetch ?? fetch)(this.options.url, {
        method: "POST",
        headers,
        body: JSON.stringify(requestFor(name, variables, withText)),
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 30_000),
      });
    } catch (error) {
      throw new Retryable(`network: ${String((error as Error)?.cause ?? error)}`);
    }
    let body: { data?: unknown; errors?: GraphQLErrorBody[] };
    try {
      body = (await response.json()) as typeof body;
    } catch (error) {
      if (response.status >= 500) throw new Retryable(`HTTP ${response.status}`);
      throw new Retryable(`the answer was cut off (HTTP ${response.status}): ${String(error)}`);
    }
    if (body.errors?.length) {
      const code = errorCode(body.errors);
      if (response.status >= 500 || (code && RETRYABLE_CODES.has(code))) throw new Retryable(`HTTP ${response.status} ${code}`);
      throw new StockwireError(body.errors.map((e) => e.message).join("; "), code, body.errors);
    }
    if (response.status >= 500) throw new Retryable(`HTTP ${response.status}`);
    if (body.data == null) throw new StockwireError(`HTTP ${response.status} without data`, `HTTP_${response.status}`);
    return body.data as ResultOf<N>;
  }
}

/** The code of GraphQL errors: the first one's that has one (the server gives each error one). */
export function errorCode(errors: unknown): string | undefined {
  if (!Array.isArray(errors)) return undefined;
  const code = (errors as (GraphQLErrorBody | null)[]).find((e) => e?.extensions?.code)?.extensions?.code;
  return typeof code === "string" ? code : undefined;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
