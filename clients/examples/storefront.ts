// A storefront page fragment with live availability: a badge per SKU that follows every change.
//
//   node clients/ts/dist/examples/storefront.js --url http://localhost:8000/graphql --key "$KEY" SKU-1 SKU-2
//
// In a browser, call mountAvailability(element, stockwire, skus) with a storefront-scope key (it is public:
// with STOCKWIRE_STOREFRONT_TRUSTED_DOCUMENTS_ONLY it can run nothing but the client's own documents).
// From Node (no DOM) this prints each fragment as it would be rendered, one line per change.
import WebSocket from "ws";

import { createStockwire, type Availability, type Stockwire } from "../ts/src/index.js";

export function renderBadge(a: Availability): string {
  const label = a.available > 0 ? (a.available <= 3 ? `Only ${a.available} left` : "In stock") : "Sold out";
  const state = a.available > 0 ? "in-stock" : "sold-out";
  return `<span class="stock ${state}" data-sku="${escape(a.skuCode)}" data-version="${a.version}">${label}</span>`;
}

function escape(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Keeps `[data-sku]` badges inside `root` up to date until `signal` aborts. */
export async function mountAvailability(
  root: { querySelector(selector: string): { outerHTML: string } | null },
  stockwire: Stockwire,
  skus: string[],
  signal?: AbortSignal,
): Promise<void> {
  for await (const event of stockwire.watchAvailability(skus)) {
    if (signal?.aborted) return;
    if (event.type !== "state") continue; // snapshotComplete: the page may drop its loading skeletons here
    const badge = root.querySelector(`[data-sku="${CSS.escape(event.state.skuCode)}"]`);
    if (badge) badge.outerHTML = renderBadge(event.state);
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const option = (name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args.splice(i, 2)[1] : undefined;
  };
  const url = option("--url") ?? process.env.STOCKWIRE_URL ?? "http://localhost:8000/graphql";
  const apiKey = option("--key") ?? process.env.STOCKWIRE_KEY;
  const stockwire = createStockwire({ url, apiKey, webSocketImpl: WebSocket });
  for await (const event of stockwire.watchAvailability(args)) {
    console.log(event.type === "state" ? renderBadge(event.state) : `<!-- snapshot complete${event.resync ? " (resync)" : ""} -->`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((error) => {
    console.error(String(error));
    process.exit(1);
  });
}
