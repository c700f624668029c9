// A channel's endpoint in Node: verifies the HMAC of Stockwire's publication pushes before using them.
//
//   ENDPOINT_SECRET=... node clients/ts/dist/examples/channel-endpoint.js --port 9000
//
// Each push is signed over its exact bytes: `X-Stockwire-Signature: sha256=<hex HMAC-SHA256 with the
// channel's endpointSecret>`. Check it in constant time on the raw body (before JSON.parse), keep per SKU
// the highest version applied (a retry never takes a figure back), answer 2xx to acknowledge.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type Server } from "node:http";

export function verified(secret: string, body: Buffer, signature: string | undefined): boolean {
  const expected = Buffer.from(`sha256=${createHmac("sha256", secret).update(body).digest("hex")}`);
  const given = Buffer.from(signature ?? "");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

interface Push {
  channel: string;
  items: { sku: string; available: number; version: number }[];
  alerts?: { sku: string; kind: string }[];
}

export function channelEndpoint(secret: string, log: (line: string) => void = console.log): Server {
  const shows = new Map<string, { version: number; available: number }>();
  return createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const body = Buffer.concat(chunks);
      if (request.method !== "POST" || !verified(secret, body, request.headers["x-stockwire-signature"] as string | undefined)) {
        log("REJECTED  bad signature");
        response.writeHead(401, { "content-type": "application/json" }).end('{"error":"bad signature"}');
        return;
      }
      const push = JSON.parse(body.toString("utf8")) as Push;
      for (const item of push.items) {
        const have = shows.get(item.sku)?.version ?? 0;
        if (item.version <= have) {
          log(`SKIPPED   ${push.channel} ${item.sku} version ${item.version} (have ${have})`);
          continue;
        }
        shows.set(item.sku, { version: item.version, available: item.available });
        log(`VERIFIED  ${push.channel} ${item.sku} available ${item.available} version ${item.version}`);
      }
      for (const alert of push.alerts ?? []) log(`ALERT     ${push.channel} ${alert.sku} ${alert.kind}`);
      response.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
    });
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const i = process.argv.indexOf("--port");
  const port = i >= 0 ? Number(process.argv[i + 1]) : 9000;
  const secret = process.env.ENDPOINT_SECRET;
  if (!secret) throw new Error("set ENDPOINT_SECRET to the channel's endpointSecret");
  channelEndpoint(secret).listen(port, "127.0.0.1");
}
