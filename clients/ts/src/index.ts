// Stockwire's TypeScript client: live availability for storefronts, safe holds for checkouts, routing.
//
//   const stockwire = createStockwire({ url: "https://stock.example.com/graphql", apiKey });
//   for await (const event of stockwire.watchAvailability(["SKU-1"], { channel: "web" })) { … }
//   const held = await stockwire.checkout.reserve([{ skuCode: "SKU-1", quantity: 2 }], { cartRef });
//   const decision = await stockwire.router.routeOrder({ orderRef: "SO-1", lines, destination });
import type * as G from "./generated/graphql.js";
import { HttpConnection, type HttpOptions } from "./http.js";
import { Resumable, type LiveEvent, type LiveOptions } from "./live.js";

export { StockwireError, UnreachableError, type RetryOptions } from "./http.js";
export { SubscriptionError, Resumable, type LiveEvent } from "./live.js";
export { requestFor, type OperationName, type ResultOf, type VariablesOf } from "./operations.js";
export type * as Schema from "./generated/graphql.js";

/** The contract's codes (README, Errors); a newer server may send others. */
export type UserErrorCode =
  | "INSUFFICIENT_STOCK" | "UNKNOWN_SKU" | "UNKNOWN_LOCATION" | "UNKNOWN_CHANNEL" | "INACTIVE_SKU"
  | "INACTIVE_LOCATION" | "INVALID_QUANTITY" | "INVALID_TTL" | "INVALID_INPUT" | "DUPLICATE_LINE"
  | "RESERVATION_NOT_FOUND" | "RESERVATION_EXPIRED" | "RESERVATION_NOT_ACTIVE" | "IDEMPOTENCY_CONFLICT"
  | "EVENT_CONFLICT" | "BATCH_TOO_LARGE" | "RATE_LIMITED"
  | (string & {});
export interface UserError {
  code: UserErrorCode;
  message: string;
  field: string[] | null;
}

export type Reservation = NonNullable<G.ReserveMutation["reserve"]["reservation"]>;
export type Availability = G.AvailabilityChangedSubscription["availabilityChanged"];
export type StockLevel = G.StockLevelChangedSubscription["stockLevelChanged"];
export type RoutingDecision = G.RouteOrderQuery["routeOrder"];
export type HeldDecision = NonNullable<G.RouteAndReserveMutation["routeAndReserve"]["decision"]>;
export type ReserveLine = G.ReserveLineInput;
export type Order = G.RouteOrderInput;

/** A checkout call's answer: the reservation, or why nothing changed. */
export type ReservationResult =
  | { ok: true; reservation: Reservation; userErrors: [] }
  | { ok: false; reservation: Reservation | null; userErrors: UserError[] };

export type RouteAndReserveResult =
  | { ok: true; decision: HeldDecision; reservation: Reservation; userErrors: [] }
  | { ok: false; decision: HeldDecision | null; reservation: Reservation | null; userErrors: UserError[] };

function reservationResult(payload: { reservation: Reservation | null; userErrors: UserError[] }): ReservationResult {
  if (payload.reservation && payload.userErrors.length === 0) {
    return { ok: true, reservation: payload.reservation, userErrors: [] };
  }
  return { ok: false, reservation: payload.reservation, userErrors: payload.userErrors };
}

export interface ReserveOptions {
  cartRef?: string;
  channel?: string;
  ttlSeconds?: number;
  /** Defaults to a fresh UUID per call, reused by every retry of that call. */
  idempotencyKey?: string;
}

/** Holds for a checkout (key scope `checkout`); retried on lost requests and 5xx, never held twice. */
export class Checkout {
  constructor(private readonly http: HttpConnection) {}

  async reserve(lines: ReserveLine[], options: ReserveOptions = {}): Promise<ReservationResult> {
    const input: G.ReserveInput = {
      lines,
      idempotencyKey: options.idempotencyKey ?? `ts-${globalThis.crypto.randomUUID()}`,
      cartRef: options.cartRef ?? null,
      channelCode: options.channel ?? null,
      ttlSeconds: options.ttlSeconds ?? null,
    };
    return reservationResult((await this.http.call("Reserve", { input })).reserve);
  }

  async commit(id: string, orderRef: string): Promise<ReservationResult> {
    return reservationResult((await this.http.call("CommitReservation", { id, orderRef })).commitReservation);
  }

  async release(id: string): Promise<ReservationResult> {
    return reservationResult((await this.http.call("ReleaseReservation", { id })).releaseReservation);
  }

  async extend(id: string, ttlSeconds: number): Promise<ReservationResult> {
    return reservationResult((await this.http.call("ExtendReservation", { id, ttlSeconds })).extendReservation);
  }
}

/** Order routing (key scope `router`; routeAndReserve also `checkout`). */
export class Router {
  constructor(private readonly http: HttpConnection) {}

  /** The decision, dry: nothing held, nothing stored. */
  async routeOrder(order: Order): Promise<RoutingDecision> {
    return (await this.http.call("RouteOrder", { input: order })).routeOrder;
  }

  /** The decision with the stock held; idempotent by idempotencyKey (default the orderRef). */
  async routeAndReserve(order: Order): Promise<RouteAndReserveResult> {
    const payload = (await this.http.call("RouteAndReserve", { input: order })).routeAndReserve;
    if (payload.decision && payload.reservation && payload.userErrors.length === 0) {
      return { ok: true, decision: payload.decision, reservation: payload.reservation, userErrors: [] };
    }
    return { ok: false, decision: payload.decision, reservation: payload.reservation, userErrors: payload.userErrors };
  }
}

export interface StockwireOptions extends Omit<HttpOptions, "url">, Omit<LiveOptions, "url" | "apiKey"> {
  /** The HTTP endpoint, …/graphql; websockets go to the same path. */
  url: string;
}

export type AvailabilityWatch = Resumable<"AvailabilityChanged", "Availability", Availability>;
export type StockLevelWatch = Resumable<"StockLevelChanged", "StockLevels", StockLevel>;
export type AvailabilityEvent = LiveEvent<Availability>;

export interface Stockwire {
  checkout: Checkout;
  router: Router;
  /** Latest availability per SKU across reconnects; a snapshotComplete event after each (re)sync. */
  watchAvailability(skus: string[], options?: { channel?: string }): AvailabilityWatch;
  /** Per-location stock across reconnects (key scope `router`). */
  watchStockLevels(filter: { skus?: string[]; locations?: string[] }): StockLevelWatch;
}

export function wsUrlOf(url: string): string {
  return url.replace(/^http/, "ws");
}

export function createStockwire(options: StockwireOptions): Stockwire {
  const http = new HttpConnection(options);
  const live: LiveOptions = { ...options, url: wsUrlOf(options.url) };
  return {
    checkout: new Checkout(http),
    router: new Router(http),
    watchAvailability: (skus, { channel } = {}) =>
      new Resumable(live, {
        subscription: "AvailabilityChanged",
        snapshot: "Availability",
        variables: { skus, channel: channel ?? null },
        rowsOfChange: (data) => [data.availabilityChanged],
        rowsOfSnapshot: (data) => data.availability,
        keyOf: (row) => row.skuCode,
        versionOf: (row) => row.version,
      }),
    watchStockLevels: ({ skus, locations }) =>
      new Resumable(live, {
        subscription: "StockLevelChanged",
        snapshot: "StockLevels",
        variables: { skus: skus ?? null, locations: locations ?? null },
        rowsOfChange: (data) => [data.stockLevelChanged],
        rowsOfSnapshot: (data) => data.stockLevels,
        keyOf: (row) => `${row.skuCode}\u001f${row.locationCode}`,
        versionOf: (row) => row.version,
      }),
  };
}
