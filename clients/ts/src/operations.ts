// Each operation's result and variables, as graphql-codegen typed them from ../operations/*.graphql
// against ../../schema.graphql; its text and hash from the trusted-documents manifest.
import type * as G from "./generated/graphql.js";
import { operations } from "./generated/manifest.js";

export interface Operations {
  Availability: [G.AvailabilityQuery, G.AvailabilityQueryVariables];
  AvailabilityChanged: [G.AvailabilityChangedSubscription, G.AvailabilityChangedSubscriptionVariables];
  StockLevels: [G.StockLevelsQuery, G.StockLevelsQueryVariables];
  StockLevelChanged: [G.StockLevelChangedSubscription, G.StockLevelChangedSubscriptionVariables];
  Reserve: [G.ReserveMutation, G.ReserveMutationVariables];
  CommitReservation: [G.CommitReservationMutation, G.CommitReservationMutationVariables];
  ReleaseReservation: [G.ReleaseReservationMutation, G.ReleaseReservationMutationVariables];
  ExtendReservation: [G.ExtendReservationMutation, G.ExtendReservationMutationVariables];
  Reservation: [G.ReservationQuery, G.ReservationQueryVariables];
  RouteOrder: [G.RouteOrderQuery, G.RouteOrderQueryVariables];
  RouteAndReserve: [G.RouteAndReserveMutation, G.RouteAndReserveMutationVariables];
}
export type OperationName = keyof Operations;
export type ResultOf<N extends OperationName> = Operations[N][0];
export type VariablesOf<N extends OperationName> = Operations[N][1];

export interface GraphQLRequestBody {
  operationName: string;
  variables: Record<string, unknown>;
  query?: string;
  extensions: { persistedQuery: { version: 1; sha256Hash: string } };
}

/** The request for one operation: named by hash (APQ style), with its text unless `withText` is false. */
export function requestFor<N extends OperationName>(name: N, variables: VariablesOf<N>, withText = true): GraphQLRequestBody {
  const op = operations[name];
  const body: GraphQLRequestBody = {
    operationName: name,
    variables: variables as Record<string, unknown>,
    extensions: { persistedQuery: { version: 1, sha256Hash: op.sha256 } },
  };
  if (withText) body.query = op.body;
  return body;
}

export function textOf(name: OperationName): string {
  return operations[name].body;
}
