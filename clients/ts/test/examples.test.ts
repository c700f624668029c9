// The TypeScript examples in clients/examples against a live server on a fresh PostgreSQL database.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { channelEndpoint } from "../../examples/channel-endpoint.js";
import { Admin, createDatabase, dropDatabase, gql, startServer, unique, until, type Database, type Server } from "./live.js";

const EXAMPLES = resolve(dirname(fileURLToPath(import.meta.url)), "../../examples");

describe("the TypeScript examples against a live server", () => {
  let db: Database | undefined;
  let server: Server | undefined;

  before(async () => {
    db = createDatabase();
    server = await startServer(db);
  });

  after(async () => {
    await server?.stop();
    dropDatabase(db);
  });

  test("the storefront fragment renders the current state, then every change", async () => {
    assert.ok(db && server);
    const admin = new Admin(server.url, db.keys.all);
    const sku = unique("SKU");
    const wh = unique("WH");
    await admin.catalogue([sku], [{ code: wh }]);
    await admin.event("RECEIVED", sku, wh, 5);
    const child = spawn(process.execPath, [resolve(EXAMPLES, "storefront.js"), "--url", server.url, "--key", db.keys.storefront, sku], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const lines: string[] = [];
    createInterface({ input: child.stdout }).on("line", (line) => lines.push(line));
    try {
      await until(() => lines.some((l) => l.includes("snapshot complete")), "the snapshot");
      assert.match(lines[0] ?? "", new RegExp(`<span class="stock in-stock" data-sku="${sku}" data-version="\\d+">In stock</span>`));
      await admin.event("SOLD", sku, wh, 3);
      await until(() => lines.some((l) => l.includes("Only 2 left")), "a low-stock badge");
      await admin.event("SOLD", sku, wh, 2);
      await until(() => lines.some((l) => l.includes("sold-out")), "a sold-out badge");
    } finally {
      child.kill("SIGTERM");
      if (child.exitCode === null && child.signalCode === null) await once(child, "exit");
    }
    const versions = lines.filter((l) => l.startsWith("<span")).map((l) => Number(/data-version="(\d+)"/.exec(l)?.[1]));
    assert.equal(versions.length, 3);
    assert.deepEqual(versions, [...versions].sort((a, b) => a - b));
  });

  test("the channel endpoint verifies the HMAC of publication pushes", async () => {
    assert.ok(db && server);
    const admin = new Admin(server.url, db.keys.all);
    const secret = "s3cret-for-the-ts-example";
    const log: string[] = [];
    const endpoint = channelEndpoint(secret, (line) => log.push(line));
    endpoint.listen(0, "127.0.0.1");
    await once(endpoint, "listening");
    const port = (endpoint.address() as { port: number }).port;
    try {
      const forged = await fetch(`http://127.0.0.1:${port}/stock`, {
        method: "POST",
        body: '{"channel":"X","items":[{"sku":"A","available":99,"version":99}]}',
        headers: { "X-Stockwire-Signature": `sha256=${createHmac("sha256", "wrong").update("x").digest("hex")}` },
      });
      assert.equal(forged.status, 401);
      const sku = unique("SKU");
      const wh = unique("WH");
      const channel = unique("WEB");
      await admin.catalogue([sku], [{ code: wh }]);
      await gql(server.url, db.keys.all, "mutation($i: [ChannelInput!]!) { upsertChannels(input: $i) { userErrors { code } } }", {
        i: [{ code: channel, name: channel, locationCodes: [wh], endpointUrl: `http://127.0.0.1:${port}/stock`, endpointSecret: secret }],
      });
      await admin.event("RECEIVED", sku, wh, 7);
      await until(() => log.some((l) => l.startsWith(`VERIFIED  ${channel} ${sku} available 7 `)), "a verified push");
      assert.deepEqual(log.filter((l) => l.startsWith("REJECTED")), ["REJECTED  bad signature"], "only the forged one");
    } finally {
      endpoint.close();
    }
  });
});
