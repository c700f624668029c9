"""Objects whose selected fields are all plain attributes, completed without graphql-core's per-field
machinery.

graphql-core completes an object field by field: for each one it builds a resolve info, calls the
resolver (Strawberry's default one reads the attribute), then completes and coerces the value. An
ingested batch answers 500 `EventResult`s of four such fields: the completion of its results was a
tenth of the server's CPU under bench/ingest.py (py-spy, bench/README.md "Round h25"). Here, an object
whose selection (after @skip/@include) holds only leaf fields without arguments, each read by
Strawberry's default resolver (compat.default_resolved_field: no resolver, no field extension), or `__typename`, is
completed in one loop: the attribute read as that resolver reads it, the value coerced as
graphql-core's `complete_leaf_value` coerces it.

Anything else takes graphql-core's path, and so does an object whose value would not complete plainly
(a null for a non-null field, an awaitable, an error, a value that does not coerce): that path then
reports it exactly as graphql-core does (tests/test_plain_fields.py compares both on the same results).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    Undefined,
    is_leaf_type,
)
from graphql.execution.collect_fields import GroupedFieldSet
from graphql.execution.executor import Executor
from graphql.pyutils import Path

from app.compat import default_resolved_field

# one selected field: (response key, Python attribute, Strawberry's default resolver, leaf type, non-null)
# or, for __typename, (response key, None, None, the type's name, True)
_Step = tuple[str, str | None, Any, Any, bool]


def plan_of(parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet) -> list[_Step] | None:
    """How to complete objects of `parent_type` for this selection plainly, or None when some field
    needs graphql-core's own path."""
    steps: list[_Step] = []
    for key, details in grouped_field_set.items():
        node = details[0].node
        name = node.name.value
        if name == "__typename":
            steps.append((key, None, None, parent_type.name, True))
            continue
        field_def = parent_type.fields.get(name)
        if field_def is None or node.arguments or field_def.args:
            return None
        strawberry_field = default_resolved_field(field_def)
        if strawberry_field is None:  # a resolver of its own, or none of Strawberry's
            return None
        type_ = field_def.type
        non_null = isinstance(type_, GraphQLNonNull)
        leaf = type_.of_type if non_null else type_
        if not is_leaf_type(leaf):
            return None
        steps.append((key, strawberry_field.python_name, strawberry_field.default_resolver, leaf, non_null))
    return steps


def complete_plainly(steps: list[_Step], source: Any, is_awaitable: Any) -> dict[str, Any] | None:
    """The object's completed fields, or None when one of them needs graphql-core's path."""
    out: dict[str, Any] = {}
    for key, attribute, resolve, leaf, non_null in steps:
        if attribute is None:
            out[key] = leaf  # __typename
            continue
        try:
            value = resolve(source, attribute)
        except Exception:
            return None
        if value is None:
            if non_null:
                return None
            out[key] = None
            continue
        if isinstance(value, Exception) or is_awaitable(value):
            return None
        try:
            coerced = leaf.coerce_output_value(value)
        except Exception:
            return None
        if coerced is Undefined or coerced is None:
            return None
        out[key] = coerced
    return out


class PlainFieldsExecutor(Executor):  # type: ignore[type-arg]
    """graphql-core's executor, completing plain objects in one loop (see the module docstring), and a
    list of them in one loop more."""

    def execute_collected_subfields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path,
        grouped_field_set: GroupedFieldSet,
        new_defer_usages: Any,
        position_context: Any,
    ) -> Any:
        steps = self._plain_steps(parent_type, grouped_field_set, new_defer_usages)
        if steps is not None:
            done = complete_plainly(steps, source_value, self.is_awaitable)
            if done is not None:
                return done
        return super().execute_collected_subfields(
            parent_type, source_value, path, grouped_field_set, new_defer_usages, position_context
        )

    def complete_list_value(
        self,
        return_type: GraphQLList[Any],
        field_details_list: Any,
        info: Any,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        # a list of plain objects (500 results of a batch): each item's completion is otherwise a
        # path, a completion and a sub-field collection of its own before the loop above
        if isinstance(result, list | tuple):
            item_type = return_type.of_type
            non_null = isinstance(item_type, GraphQLNonNull)
            object_type = item_type.of_type if non_null else item_type
            if (
                isinstance(object_type, GraphQLObjectType)
                and object_type.is_type_of is None
                and self.get_stream_usage(field_details_list, path) is None
            ):
                grouped_field_set, new_defer_usages, _ = self.collect_subfields(object_type, field_details_list)
                steps = self._plain_steps(object_type, grouped_field_set, new_defer_usages)
                if steps is not None:
                    done = _complete_list_plainly(steps, result, non_null, self.is_awaitable)
                    if done is not None:
                        return done
        return super().complete_list_value(return_type, field_details_list, info, path, result, position_context)

    def _plain_steps(
        self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet, new_defer_usages: Any
    ) -> list[_Step] | None:
        if new_defer_usages or self.middleware_manager is not None:
            return None
        plans: dict[int, tuple[GroupedFieldSet, list[_Step] | None]] | None = self.__dict__.get("_plain_plans")
        if plans is None:
            plans = self.__dict__["_plain_plans"] = {}
        known = plans.get(id(grouped_field_set))
        if known is None or known[0] is not grouped_field_set:
            # kept with the field set alive (its id cannot be reused meanwhile), as collect_subfields does
            known = plans[id(grouped_field_set)] = (grouped_field_set, plan_of(parent_type, grouped_field_set))
        return known[1]


def _complete_list_plainly(
    steps: list[_Step], items: list[Any] | tuple[Any, ...], non_null: bool, is_awaitable: Any
) -> list[Any] | None:
    """Each item completed plainly (None for a null item of a nullable list), or None when one of them
    needs graphql-core's path (then the whole list takes it)."""
    done: list[Any] = []
    for item in items:
        if item is None:
            if non_null:
                return None
            done.append(None)
            continue
        if is_awaitable(item):
            return None
        completed = complete_plainly(steps, item, is_awaitable)
        if completed is None:
            return None
        done.append(completed)
    return done
