// Subscriptions that survive reconnects: resubscribe, resync from versions, never go backwards.
//
// graphql-ws reconnects (with backoff) and subscribes again by itself; on every (re)connection this
// also reads the current state with a query on the same socket. Whatever arrives (pushed state, query
// rows, changes) passes only if its `version` is newer than what was already handed out for that key,
// so each key's versions go strictly up across any number of reconnects and end at the latest state.
// When the query's rows are in, a snapshot marker follows.
import { createClient, type Client, type ClientOptions } from "graphql-ws";

import { errorCode, RETRYABLE_CODES } from "./http.js";
import { requestFor, type OperationName, type ResultOf, type VariablesOf } from "./operations.js";

// close codes after which reconnecting cannot help: bad message, unauthorised, forbidden, ...
export const FATAL_CLOSE_CODES = new Set([4400, 4401, 4403, 4406, 4409]);

/** The server refused the subscription (bad key, scope, document or argument): retrying would not help.
 * A refusal that says the server is briefly unwell (UNAVAILABLE: its database was busy or unreachable;
 * INTERNAL_SERVER_ERROR) is not one: the subscription is sent again after a backoff. */
export class SubscriptionError extends Error {
  constructor(message: string, readonly code?: number) {
    super(message);
    this.name = "SubscriptionError";
  }
}

export interface LiveOptions {
  url: string; // ws:// or wss:// …/graphql
  apiKey?: string;
  /** A WebSocket implementation where there is no global one (Node 20: the `ws` package). */
  webSocketImpl?: unknown;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Ping when the line is this quiet, and reconnect when no pong follows within as long again. */
  keepAliveMs?: number;
}

export interface Feed<S extends OperationName, Q extends OperationName, T> {
  subscription: S;
  snapshot: Q;
  variables: VariablesOf<S> & VariablesOf<Q>;
  rowsOfChange(data: ResultOf<S>): T[];
  rowsOfSnapshot(data: ResultOf<Q>): T[];
  keyOf(row: T): string;
  versionOf(row: T): number;
}

export type LiveEvent<T> = { type: "state"; state: T } | { type: "snapshotComplete"; resync: boolean };

/** A queue that an async iterator drains; `fail` ends it with an error. */
class Channel<T> {
  private items: T[] = [];
  private waiting: ((r: IteratorResult<T>) => void)[] = [];
  private rejecters: ((e: unknown) => void)[] = [];
  private error: unknown = undefined;
  private closed = false;

  push(item: T): void {
    const resolve = this.waiting.shift();
    this.rejecters.shift();
    if (resolve) resolve({ value: item, done: false });
    else this.items.push(item);
  }

  fail(error: unknown): void {
    this.error = error ?? new Error("subscription ended");
    for (const reject of this.rejecters) reject(this.error);
    this.waiting = [];
    this.rejecters = [];
  }

  close(): void {
    this.closed = true;
    for (const resolve of this.waiting) resolve({ value: undefined, done: true });
    this.waiting = [];
    this.rejecters = [];
  }

  next(): Promise<IteratorResult<T>> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve({ value: item, done: false });
    if (this.error !== undefined) return Promise.reject(this.error);
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiting.push(resolve);
      this.rejecters.push(reject);
    });
  }
}

/** Iterate for states and snapshot markers until you break out (which closes the socket). */
export class Resumable<S extends OperationName, Q extends OperationName, T> implements AsyncIterable<LiveEvent<T>> {
  /** Per key, the version last handed out. */
  readonly versions = new Map<string, number>();
  connections = 0;
  /** Times the server refused the subscription for now (its database busy or unreachable) and it was sent again. */
  refusals = 0;

  constructor(
    private readonly options: LiveOptions,
    private readonly feed: Feed<S, Q, T>,
  ) {}

  get reconnects(): number {
    return Math.max(0, this.connections - 1);
  }

  [Symbol.asyncIterator](): AsyncIterator<LiveEvent<T>> {
    const channel = new Channel<LiveEvent<T>>();
    const { feed, options } = this;
    const keepAlive = options.keepAliveMs ?? 10_000;
    let pongTimer: ReturnType<typeof setTimeout> | undefined;
    let retryTimer: ReturnType<typeof setTimeout> | undefined;
    let refusals = 0; // retryable refusals in a row (see SubscriptionError)
    let finished = false;
    let synced = false;

    const accept = (row: T): void => {
      const key = feed.keyOf(row);
      const version = feed.versionOf(row);
      if (version <= (this.versions.get(key) ?? 0)) return; // re-sent on a reconnect, a repeat, or older
      this.versions.set(key, version);
      channel.push({ type: "state", state: row });
    };

    const clientOptions: ClientOptions = {
      url: options.url,
      connectionParams: options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {},
      lazy: false,
      keepAlive,
      retryAttempts: Number.POSITIVE_INFINITY,
      retryWait: async (retries) => {
        await new Promise((r) => setTimeout(r, backoffMs(options, retries)));
      },
      shouldRetry: (event) => !isFatal(event),
      on: {
        connected: () => {
          this.connections += 1;
          const resync = synced;
          synced = true;
          readSnapshot(resync); // alongside the (re)subscription graphql-ws sends itself
        },
        ping: (received) => {
          if (!received) pongTimer = setTimeout(() => socket?.close(4408, "no pong"), keepAlive);
        },
        pong: (received) => {
          if (received) clearTimeout(pongTimer);
        },
        opened: (s) => {
          socket = s as WebSocket;
        },
        closed: () => clearTimeout(pongTimer),
      },
    };
    if (options.webSocketImpl) clientOptions.webSocketImpl = options.webSocketImpl;
    let socket: WebSocket | undefined;
    const client: Client = createClient(clientOptions);

    // the state as of now: on every (re)connection, and after a refusal for now (see `refused`)
    const readSnapshot = (resync: boolean): void => {
      const request = requestFor(feed.snapshot, feed.variables);
      const rows: T[] = [];
      client.subscribe<ResultOf<Q>>(
        { ...request, query: request.query ?? "" },
        {
          next: (result) => {
            if (result.data) rows.push(...feed.rowsOfSnapshot(result.data));
          },
          error: () => undefined, // the connection dropped (the next one reads again) or the server is unwell
          complete: () => {
            for (const row of rows) accept(row);
            channel.push({ type: "snapshotComplete", resync });
          },
        },
      );
    };

    const request = requestFor(feed.subscription, feed.variables);
    const subscribe = (): (() => void) => {
      // once refused for now, this subscription is done with: the `complete` the server sends after its
      // error must not end the watch (a new subscription takes over)
      let abandoned = false;
      const refusedNow = (errors: unknown): boolean => {
        if (!abandoned && refused(errors)) abandoned = true;
        return abandoned;
      };
      return client.subscribe<ResultOf<S>>(
        { ...request, query: request.query ?? "" },
        {
          next: (result) => {
            if (abandoned) return;
            if (result.errors?.length) {
              if (!refusedNow(result.errors)) channel.fail(new SubscriptionError(result.errors.map((e) => e.message).join("; ")));
            } else if (result.data) {
              refusals = 0; // it works again: the next refusal starts from the bottom
              for (const row of feed.rowsOfChange(result.data)) accept(row);
            }
          },
          error: (error) => {
            if (!refusedNow(error)) channel.fail(asSubscriptionError(error));
          },
          complete: () => {
            if (!abandoned) channel.close();
          },
        },
      );
    };
    let unsubscribe = subscribe();

    // A retryable refusal (the server's database busy or unreachable): subscribe again after a backoff on
    // the same connection, and read the state again, as after a reconnection. Returns false for the others.
    const refused = (errors: unknown): boolean => {
      const code = errorCode(errors);
      if (code === undefined || !RETRYABLE_CODES.has(code) || finished) return false;
      unsubscribe();
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => {
        if (finished) return;
        unsubscribe = subscribe();
        readSnapshot(true);
      }, backoffMs(options, refusals));
      refusals += 1;
      this.refusals += 1;
      return true;
    };

    const finish = async (): Promise<IteratorResult<LiveEvent<T>>> => {
      finished = true;
      clearTimeout(pongTimer);
      clearTimeout(retryTimer);
      unsubscribe();
      await client.dispose();
      channel.close();
      return { value: undefined, done: true };
    };
    return {
      next: () =>
        channel.next().catch(async (error) => {
          await finish();
          throw error;
        }),
      return: finish,
    };
  }
}

function backoffMs(options: LiveOptions, retries: number): number {
  const base = Math.min((options.minBackoffMs ?? 250) * 2 ** retries, options.maxBackoffMs ?? 15_000);
  return base * (0.5 + Math.random() / 2);
}

function closeCode(event: unknown): number | undefined {
  const code = (event as { code?: unknown } | null)?.code;
  return typeof code === "number" ? code : undefined;
}

function isFatal(event: unknown): boolean {
  const code = closeCode(event);
  return code !== undefined && FATAL_CLOSE_CODES.has(code);
}

function asSubscriptionError(error: unknown): SubscriptionError {
  const code = closeCode(error);
  if (code !== undefined) return new SubscriptionError(`the server closed the connection with ${code}`, code);
  if (Array.isArray(error)) return new SubscriptionError(error.map((e: { message?: string }) => e.message).join("; "));
  return new SubscriptionError(String((error as Error)?.message ?? error));
}
