"""Monte-Carlo dropout without recomputing what dropout cannot change.

The BU detector needs many forward passes of one input under different dropout masks. Every
operation of the network that does not depend, directly or through others, on a dropout layer's
output gives the same result in each of those passes: in a VGG or a LeNet (dropout before the
fully connected layers) that is the whole convolutional trunk. :func:`split_at_dropout` traces the
model with ``torch.fx`` and cuts its graph into

- a *deterministic* part, ``x -> frontier``: every node that no dropout output reaches, returning
  those of its values that the rest of the graph reads (the "frontier");
- a *stochastic* part, ``frontier -> output``: the dropout layers and everything after them.

Running the first once and the second once per mask gives the same numbers as full forward passes
(the same operations on the same values, the dropout layers drawing from torch's RNG in the same
order), at the cost of the head alone. A model ``torch.fx`` cannot trace (data-dependent control
flow, say) keeps full forward passes.
"""

from __future__ import annotations

from typing import Any, Sequence


def _stochastic_nodes(graph: Any, dropout_names: set[str]) -> set:
    """The nodes of ``graph`` that a dropout module's output reaches (the dropout calls included)."""
    reached = set()
    for node in graph.nodes:  # topological order
        if node.op == "call_module" and node.target in dropout_names:
            reached.add(node)
        elif any(arg in reached for arg in node.all_input_nodes):
            reached.add(node)
    return reached


def _frontier(graph: Any, stochastic: set) -> list:
    """Deterministic nodes whose values a stochastic node (or the output) reads, in graph order."""
    return [node for node in graph.nodes
            if node not in stochastic and node.op != "output"
            and any(user in stochastic or user.op == "output" for user in node.users)]


def _deterministic_graph(torch: Any, graph: Any, stochastic: set, frontier: list) -> Any:
    part, env = torch.fx.Graph(), {}
    for node in graph.nodes:
        if node not in stochastic and node.op != "output":
            env[node] = part.node_copy(node, lambda n: env[n])
    part.output(tuple(env[n] for n in frontier))
    return part


def _stochastic_graph(torch: Any, graph: Any, stochastic: set, frontier: list) -> Any:
    part, env = torch.fx.Graph(), {}
    for i, node in enumerate(frontier):
        env[node] = part.placeholder(f"frontier_{i}")
    for node in graph.nodes:
        if node in stochastic or node.op == "output":
            env[node] = part.node_copy(node, lambda n: env[n])
    return part


def split_at_dropout(torch: Any, model: Any, dropouts: Sequence[Any]) -> tuple[Any, Any] | None:
    """``(deterministic, stochastic)`` modules with ``stochastic(*deterministic(x)) == model(x)``.

    Both share ``model``'s submodules (so putting its dropout layers in training mode acts on the
    stochastic part). None when ``torch.fx`` cannot trace the model, when no traced node calls one
    of ``dropouts``, or when nothing is deterministic (a dropout on the input).
    """
    names = {name for name, mod in model.named_modules() if any(mod is d for d in dropouts)}
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: run the model whole
        return None
    graph = traced.graph
    stochastic = _stochastic_nodes(graph, names)
    frontier = _frontier(graph, stochastic)
    if not stochastic or all(node.op == "placeholder" for node in frontier):
        return None
    det = torch.fx.GraphModule(traced, _deterministic_graph(torch, graph, stochastic, frontier))
    det.graph.eliminate_dead_code()
    det.recompile()
    sto = torch.fx.GraphModule(traced, _stochastic_graph(torch, graph, stochastic, frontier))
    return det, sto
