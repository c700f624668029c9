// A live Stockwire server for the tests: a fresh PostgreSQL database (made and dropped by
// clients/testing/database.py), uvicorn processes on free ports, and a TCP proxy the test controls.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import net from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../../../..");
export const PYTHON = process.env.STOCKWIRE_PYTHON ?? resolve(ROOT, ".venv/bin/python");
const DATABASE_TOOL = resolve(ROOT, "clients/testing/database.py");

export interface Database {
  name: string;
  url: string;
  keys: Record<"all" | "storefront" | "checkout" | "router" | "integration" | "admin", string>;
}

export function createDatabase(): Database {
  return JSON.parse(execFileSync(PYTHON, [DATABASE_TOOL, "create"], { cwd: ROOT, encoding: "utf8" })) as Database;
}

export function dropDatabase(db: Database | undefined): void {
  if (db) execFileSync(PYTHON, [DATABASE_TOOL, "drop", db.name], { cwd: ROOT, stdio: "inherit" });
}

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL"); // whatever a failed test left behind
});

export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as net.AddressInfo).port;
  server.close();
  await once(server, "close");
  return port;
}

export class Server {
  constructor(
    readonly process: ChildProcess,
    readonly port: number,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}/graphql`;
  }

  async stop(): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = once(this.process, "exit");
    this.process.kill("SIGTERM");
    const timer = setTimeout(() => this.process.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
    running.delete(this.process);
  }
}

export async function startServer(db: Database, env: Record<string, string> = {}): Promise<Server> {
  const port = await freePort();
  const child = spawn(
    PYTHON,
    ["-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port", String(port), "--log-level", "warning"],
    {
      cwd: ROOT,
      stdio: ["ignore", "inherit", "inherit"],
      env: { ...process.env, STOCKWIRE_DATABASE_URL: db.url, STOCKWIRE_BROADCAST_URL: "memory://", STOCKWIRE_GC_THRESHOLD: "0", ...env },
    },
  );
  running.add(child);
  const server = new Server(child, port);
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the server exited with ${child.exitCode}`);
    try {
      if ((await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200) return server;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await server.stop();
  throw new Error("the server did not become ready in 30 s");
}

/** GraphQL over HTTP with a key, failing on any GraphQL error: the test's own calls. */
export async function gql<T = Record<string, any>>(url: string, key: string, query: string, variables: object = {}): Promise<T> {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await response.json()) as { data?: T; errors?: unknown };
  if (response.status !== 200 || body.errors) throw new Error(`HTTP ${response.status}: ${JSON.stringify(body)}`);
  return body.data as T;
}

/**
 * The row locks of a SKU's positions, held by a transaction of another process (clients/testing/database.py
 * lock): `waited()` resolves once a request waits for them (holding a connection of its server's pool),
 * `release()` commits.
 */
export class RowLock {
  private lines: string[] = [];
  private wake: (() => void) | undefined;

  private constructor(private readonly child: ChildProcess) {
    let buffered = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      buffered += chunk;
      const parts = buffered.split("\n");
      buffered = parts.pop() ?? "";
      this.lines.push(...parts.filter((l) => l));
      this.wake?.();
    });
  }

  static async take(db: Database, sku: string): Promise<RowLock> {
    const child = spawn(PYTHON, [DATABASE_TOOL, "lock", db.url, sku], { cwd: ROOT, stdio: ["pipe", "pipe", "inherit"] });
    running.add(child);
    const lock = new RowLock(child);
    await lock.line("locked");
    return lock;
  }

  async waited(): Promise<void> {
    this.child.stdin?.write("wait\n");
    await this.line("waited");
  }

  async release(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = once(this.child, "exit");
    this.child.stdin?.end("commit\n");
    await exited;
    running.delete(this.child);
  }

  private async line(expected: string): Promise<void> {
    const deadline = Date.now() + 15_000;
    while (!this.lines.includes(expected)) {
      if (this.child.exitCode !== null) throw new Error(`the lock holder exited with ${this.child.exitCode}`);
      if (Date.now() > deadline) throw new Error(`the lock holder never said ${expected}`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 100);
      });
    }
    this.lines.splice(this.lines.indexOf(expected), 1);
  }
}

let counter = 0;
export function unique(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

export class Admin {
  constructor(
    readonly url: string,
    readonly key: string,
  ) {}

  async catalogue(skus: string[], locations: { code: string; latitude?: number; longitude?: number }[]): Promise<void> {
    await gql(this.url, this.key, "mutation($i: [SkuInput!]!) { upsertSkus(input: $i) { userErrors { code } } }", {
      i: skus.map((code) => ({ code, name: code })),
    });
    await gql(this.url, this.key, "mutation($i: [LocationInput!]!) { upsertLocations(input: $i) { userErrors { code } } }", {
      i: locations.map((l) => ({ name: l.code, kind: "WAREHOUSE", ...l })),
    });
  }

  async event(type: string, skuCode: string, locationCode: string, quantity: number): Promise<void> {
    const data = await gql(
      this.url,
      this.key,
      "mutation($i: [InventoryEventInput!]!) { recordInventoryEvents(input: $i) { userErrors { code message } } }",
      { i: [{ source: "erp", externalId: unique("e"), type, skuCode, locationCode, quantity, occurredAt: "2026-01-01T00:00:00Z" }] },
    );
    if (data.recordInventoryEvents.userErrors.length) throw new Error(JSON.stringify(data));
  }

  async availability(sku: string): Promise<{ available: number; version: number }> {
    const data = await gql(this.url, this.key, "query($s: [String!]!) { availability(skuCodes: $s) { available version } }", { s: [sku] });
    return data.availability[0];
  }

  async reserved(sku: string): Promise<Record<string, number>> {
    const data = await gql(this.url, this.key, "query($s: [String!]) { stockLevels(skuCodes: $s) { locationCode reserved } }", { s: [sku] });
    return Object.fromEntries(data.stockLevels.map((l: { locationCode: string; reserved: number }) => [l.locationCode, l.reserved]));
  }
}

/**
 * Forwards TCP connections to `upstream`; `cut()` aborts every open one (no close frame, as a network
 * failure looks), `upstream = null` refuses new ones, `dropResponses = n` lets the next n requests reach
 * the server and destroys the connection when the answer comes back.
 */
export class Proxy {
  upstream: number | null;
  dropResponses = 0;
  dropped = 0;
  accepted = 0;
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;

  constructor(upstream: number) {
    this.upstream = upstream;
    this.server = net.createServer((client) => this.link(client));
  }

  async start(): Promise<this> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    return this;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/graphql`;
  }

  cut(): void {
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }

  private link(client: net.Socket): void {
    if (this.upstream === null) {
      client.resetAndDestroy();
      return;
    }
    this.accepted += 1;
    const upstream = net.connect(this.upstream, "127.0.0.1");
    this.sockets.add(client).add(upstream);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => {
      if (this.dropResponses > 0) {
        this.dropResponses -= 1;
        this.dropped += 1;
        client.resetAndDestroy();
        end();
        return;
      }
      client.write(chunk);
    });
    for (const socket of [client, upstream]) {
      socket.on("error", end);
      socket.on("close", end);
    }
  }
}

export async function until(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
