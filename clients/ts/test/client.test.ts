// The TypeScript client against a live server on a fresh PostgreSQL database.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { createStockwire, type Availability, type AvailabilityEvent, type AvailabilityWatch } from "../src/index.js";
import { Admin, createDatabase, dropDatabase, gql, Proxy, RowLock, startServer, unique, until, type Database, type Server } from "./live.js";

const DENVER = { latitude: 39.74, longitude: -104.99 };

/** Iterates `watch` in the background, keeping what it yields and the error that ended it. */
function consume(watch: AvailabilityWatch) {
  const events: AvailabilityEvent[] = [];
  let failure: unknown;
  const iterator = watch[Symbol.asyncIterator]();
  const consuming = (async () => {
    try {
      for (;;) {
        const step = await iterator.next();
        if (step.done) return;
        events.push(step.value);
      }
    } catch (error) {
      failure = error;
    }
  })();
  return {
    events,
    states: (): Availability[] => events.flatMap((e) => (e.type === "state" ? [e.state] : [])),
    failure: (): unknown => failure,
    async stop(): Promise<void> {
      await iterator.return?.();
      await consuming;
    },
  };
}

describe("the TypeScript client against a live server", () => {
  let db: Database | undefined;
  let server: Server | undefined;
  const proxies: Proxy[] = [];

  before(async () => {
    db = createDatabase();
    server = await startServer(db);
  });

  after(async () => {
    for (const p of proxies) await p.stop();
    await server?.stop();
    dropDatabase(db);
  });

  test("watchAvailability survives a server restart: no regression, ends at the true state", async () => {
    assert.ok(db && server);
    const admin = new Admin(server.url, db.keys.all);
    const sku = unique("SKU");
    const wh = unique("WH");
    await admin.catalogue([sku], [{ code: wh }]);
    await admin.event("RECEIVED", sku, wh, 5);
    const proxy = await new Proxy(server.port).start();
    proxies.push(proxy);
    const storefront = createStockwire({
      url: proxy.url,
      apiKey: db.keys.storefront,
      webSocketImpl: WebSocket,
      minBackoffMs: 50,
      maxBackoffMs: 300,
      keepAliveMs: 2_000,
    });
    const watch = storefront.watchAvailability([sku]);
    const seen = consume(watch);
    const { events, states } = seen;
    const shows = (n: number) => () => {
      if (seen.failure()) throw seen.failure();
      return states().at(-1)?.available === n;
    };
    try {
      await until(() => events.some((e) => e.type === "snapshotComplete" && !e.resync), "the snapshot");
      assert.deepEqual(states().map((s) => s.available), [5]);
      await admin.event("RECEIVED", sku, wh, 1);
      await until(shows(6), "a change");

      // the server goes away; its successor on the same database changes the stock while the client
      // cannot reach it; then the successor becomes reachable at the client's address
      proxy.upstream = null;
      proxy.cut();
      await server.stop();
      const successor = await startServer(db);
      server = successor; // the later tests use it
      const admin2 = new Admin(successor.url, db.keys.all);
      await admin2.event("SOLD", sku, wh, 2);
      await admin2.event("RECEIVED", sku, wh, 10);
      proxy.upstream = successor.port;
      await until(shows(14), "the state missed while disconnected");
      await until(() => events.some((e) => e.type === "snapshotComplete" && e.resync), "the resync");
      await admin2.event("SOLD", sku, wh, 1);
      await until(shows(13), "a change after the restart");
      const truth = await admin2.availability(sku);

      assert.deepEqual(states().map((s) => s.available), [5, 6, 14, 13]);
      const versions = states().map((s) => s.version);
      assert.deepEqual(versions, [...new Set(versions)].sort((a, b) => a - b), "versions only go up");
      assert.equal(states().at(-1)?.version, truth.version);
      assert.equal(watch.versions.get(sku), truth.version);
      assert.ok(watch.reconnects >= 1);
    } finally {
      await seen.stop();
    }
    assert.equal(seen.failure(), undefined);
  });

  test("watchAvailability refused while the database is busy (UNAVAILABLE) subscribes again", async () => {
    assert.ok(db);
    // one connection, and a request waits 0.3 s for it before it is answered UNAVAILABLE
    const busy = await startServer(db, {
      STOCKWIRE_DB_POOL_SIZE: "1",
      STOCKWIRE_DB_MAX_OVERFLOW: "0",
      STOCKWIRE_DB_POOL_WARM: "1",
      STOCKWIRE_DB_POOL_TIMEOUT_SECONDS: "0.3",
    });
    let lock: RowLock | undefined;
    try {
      const admin = new Admin(busy.url, db.keys.all);
      const sku = unique("SKU");
      const wh = unique("WH");
      await admin.catalogue([sku], [{ code: wh }]);
      await admin.event("RECEIVED", sku, wh, 5);
      // the storefront's key is checked once over HTTP, so the websocket finds it in the server's cache
      assert.equal((await new Admin(busy.url, db.keys.storefront).availability(sku)).available, 5);

      // an ERP's event on that SKU takes the server's one connection and waits for the row lock held here
      lock = await RowLock.take(db, sku);
      const receipt = admin.event("RECEIVED", sku, wh, 1);
      await lock.waited();
      const storefront = createStockwire({
        url: busy.url,
        apiKey: db.keys.storefront,
        webSocketImpl: WebSocket,
        minBackoffMs: 50,
        maxBackoffMs: 300,
      });
      const watch = storefront.watchAvailability([sku]);
      const seen = consume(watch);
      try {
        await until(() => {
          if (seen.failure()) throw seen.failure();
          return watch.refusals > 0;
        }, "a refusal for now");
        assert.equal(seen.states().length, 0);
        await lock.release(); // the lock goes: the event, then the subscription, get through
        await receipt;
        await until(() => {
          if (seen.failure()) throw seen.failure();
          return seen.states().at(-1)?.available === 6;
        }, "the state once the database is free");
      } finally {
        await seen.stop();
      }
      assert.equal(seen.failure(), undefined);
    } finally {
      await lock?.release();
      await busy.stop();
    }
  });

  test("checkout: a reserve whose answer was lost is retried and holds exactly once", async () => {
    assert.ok(db && server);
    const admin = new Admin(server.url, db.keys.all);
    const sku = unique("SKU");
    const wh = unique("WH");
    await admin.catalogue([sku], [{ code: wh }]);
    await admin.event("RECEIVED", sku, wh, 5);
    const proxy = await new Proxy(server.port).start();
    proxies.push(proxy);
    const { checkout } = createStockwire({ url: proxy.url, apiKey: db.keys.checkout, retry: { firstDelayMs: 50 } });
    const cart = unique("cart");

    proxy.dropResponses = 1; // the server serves the reserve; its answer is lost on the way back
    const held = await checkout.reserve([{ skuCode: sku, quantity: 3 }], { cartRef: cart });
    assert.equal(proxy.dropped, 1);
    assert.ok(held.ok, JSON.stringify(held.userErrors));
    assert.deepEqual(held.reservation.lines.map((l) => [l.skuCode, l.locationCode, l.quantity]), [[sku, wh, 3]]);
    const rows = await gql(server.url, db.keys.all, "query($c: String!) { reservations(cartRef: $c) { id } }", { c: cart });
    assert.deepEqual(rows.reservations.map((r: { id: string }) => r.id), [held.reservation.id]);
    assert.deepEqual(await admin.reserved(sku), { [wh]: 3 });

    const short = await checkout.reserve([{ skuCode: sku, quantity: 3 }]);
    assert.equal(short.ok, false);
    assert.deepEqual(short.userErrors.map((e) => e.code), ["INSUFFICIENT_STOCK"]);
    const extended = await checkout.extend(held.reservation.id, 1800);
    assert.ok(extended.ok && extended.reservation.expiresAt > held.reservation.expiresAt);
    const committed = await checkout.commit(held.reservation.id, "SO-1");
    assert.ok(committed.ok && committed.reservation.status === "COMMITTED");
    const late = await checkout.release(held.reservation.id);
    assert.deepEqual(late.userErrors.map((e) => e.code), ["RESERVATION_NOT_ACTIVE"]);
    assert.deepEqual(await admin.reserved(sku), { [wh]: 0 });
  });

  test("router: a dry-run decision, then the same decision held", async () => {
    assert.ok(db && server);
    const admin = new Admin(server.url, db.keys.all);
    const sku = unique("SKU");
    const near = unique("DEN");
    const far = unique("NYC");
    await admin.catalogue([sku], [{ code: near, ...DENVER }, { code: far, latitude: 40.71, longitude: -74.0 }]);
    await admin.event("RECEIVED", sku, near, 4);
    await admin.event("RECEIVED", sku, far, 4);
    const { router } = createStockwire({ url: server.url, apiKey: db.keys.router });
    const order = { orderRef: unique("SO"), lines: [{ skuCode: sku, quantity: 2 }], destination: DENVER };

    const dry = await router.routeOrder(order);
    assert.equal(dry.outcome, "DRY_RUN");
    assert.deepEqual(dry.shipments.map((s) => [s.locationCode, s.lines.map((l) => [l.skuCode, l.quantity])]), [[near, [[sku, 2]]]]);
    assert.match(dry.reason, new RegExp(`^${near} ships all 1 line`));
    const held = await router.routeAndReserve(order);
    assert.ok(held.ok);
    assert.equal(held.decision.outcome, "RESERVED");
    const again = await router.routeAndReserve(order);
    assert.equal(again.reservation?.id, held.reservation.id, "idempotent by orderRef");
    assert.deepEqual(await admin.reserved(sku), { [near]: 2, [far]: 0 });
    const refused = await router.routeOrder({ orderRef: unique("SO"), lines: [{ skuCode: sku, quantity: 99 }] });
    assert.deepEqual(refused.userErrors.map((e) => e.code), ["INSUFFICIENT_STOCK"]);
  });
});
