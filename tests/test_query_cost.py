"""The cost of a repeated document is remembered only when no variable changes it (app/graphql/limits.py)."""

from __future__ import annotations

from graphql import DocumentNode, GraphQLSchema, OperationDefinitionNode, build_schema, parse

from app.graphql import limits

SCHEMA = build_schema(
    """
    type Query {
      availability(skuCodes: [String!]!): [Availability!]!
      skus(first: Int): [Sku!]!
      sku(code: String!): Sku
    }
    type Mutation { reserve(input: ReserveInput!): ReservePayload! }
    input ReserveInput { skuCode: String! quantity: Int! }
    type ReservePayload { reservation: Reservation lines: [Line!]! }
    type Reservation { id: ID! lines: [Line!]! }
    type Line { skuCode: String! }
    type Availability { skuCode: String! locations: [Location!]! }
    type Sku { code: String! locations: [Location!]! }
    type Location { code: String! }
    """
)
LIST = 20


def _operation(document: DocumentNode) -> OperationDefinitionNode:
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    return operation


def _cost(schema: GraphQLSchema, document: DocumentNode, variables: dict[str, object] | None) -> int:
    return limits.cost_of(schema, document, _operation(document), variables, LIST)


def _remembered(document: DocumentNode) -> bool:
    return any(entry[1] is document for entry in limits._fixed_costs.values())


def test_a_checkout_is_costed_once_and_the_same_as_walking_it() -> None:
    document = parse(
        "mutation R($input: ReserveInput!) "
        "{ reserve(input: $input) { reservation { id lines { skuCode } } lines { skuCode } } }"
    )
    walked = limits.query_cost(SCHEMA, document, _operation(document), {"input": {}}, LIST)
    assert walked == 1 * (1 + 1 * (1 + LIST) + LIST)
    assert _cost(SCHEMA, document, {"input": {"skuCode": "A", "quantity": 1}}) == walked
    assert _remembered(document)
    assert _cost(SCHEMA, document, {"input": {"skuCode": "B", "quantity": 9}}) == walked


def test_codes_sent_as_a_variable_are_counted_on_every_request() -> None:
    document = parse("query A($codes: [String!]!) { availability(skuCodes: $codes) { locations { code } } }")
    assert _cost(SCHEMA, document, {"codes": ["A", "B"]}) == 2 * (1 + LIST)
    assert not _remembered(document)
    assert _cost(SCHEMA, document, {"codes": [f"C{i}" for i in range(1000)]}) == 1000 * (1 + LIST)
    assert _cost(SCHEMA, document, {"codes": ["A"]}) == 1 + LIST


def test_a_page_size_from_a_variable_or_its_default_is_counted_on_every_request() -> None:
    document = parse("query P($n: Int = 5) { skus(first: $n) { locations { code } } }")
    assert _cost(SCHEMA, document, {}) == 5 * (1 + LIST)
    assert _cost(SCHEMA, document, {"n": 300}) == 300 * (1 + LIST)
    assert not _remembered(document)


def test_literal_codes_are_the_documents_own_cost() -> None:
    document = parse('{ availability(skuCodes: ["A", "B", "C"]) { skuCode } sku(code: "A") { locations { code } } }')
    assert _cost(SCHEMA, document, None) == 3 + 1 * (1 + LIST)
    assert _remembered(document)


def test_an_argument_that_does_not_change_the_count_is_not_read() -> None:
    # `sku(code: $code)` returns one SKU whatever the code: the count is the document's
    document = parse("query S($code: String!) { sku(code: $code) { locations { code } } }")
    assert _cost(SCHEMA, document, {"code": "A"}) == 1 + LIST
    assert _remembered(document)


def test_another_schema_or_document_with_the_same_text_is_costed_on_its_own() -> None:
    text = "query L { skus(first: 3) { locations { code } } }"
    first, second = parse(text), parse(text)
    assert _cost(SCHEMA, first, None) == _cost(SCHEMA, second, None) == 3 * (1 + LIST)
    other = build_schema("type Query { skus(first: Int): [Sku!]! } type Sku { code: String! }")
    assert _cost(other, first, None) == 3


def test_the_remembered_costs_are_bounded() -> None:
    for i in range(limits._FIXED_COSTS_MAX + 50):
        _cost(SCHEMA, parse(f'{{ sku(code: "{i}") {{ code }} }}'), None)
    assert len(limits._fixed_costs) <= limits._FIXED_COSTS_MAX
