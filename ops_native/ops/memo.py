"""_ShapeMemo: a group of shape-only nodes (passes/shapes.py) run once per combination of input shapes."""

from __future__ import annotations

from ops_native.ops.registry import BuildContext, Fn, Node, build, register

MAX_SHAPES = 16   # distinct shape combinations kept (a server sees few; a stream of new ones starts over)


@register("_ShapeMemo")
def _build_shape_memo(node: Node, ctx: BuildContext) -> Fn:
    inner: list[Node] = node.attrs["_nodes"]
    fns = [build(n, ctx) for n in inner]
    consts = ctx.consts
    sources = list(node.inputs)
    wanted = list(node.outputs)
    cache: dict[tuple, list] = {}

    def compute(args: list) -> list:
        env = dict(zip(sources, args))
        for n, fn in zip(inner, fns):
            try:
                res = fn([env[i] if i in env else consts.get(i) if i else None for i in n.inputs])
            except Exception as e:
                e.add_note(f"in node '{n.name}' ({n.op_type}) of the shape subgraph '{node.name}'")
                raise
            env.update((o, v) for o, v in zip(n.outputs, res) if o)
        return [env[o] for o in wanted]

    def fn(args: list) -> list:
        try:
            key = tuple(a.shape for a in args)
        except AttributeError:   # not tensors (a sequence value): nothing to key on
            return compute(args)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= MAX_SHAPES:
                cache.clear()
            hit = cache[key] = compute(args)
        return hit

    return fn
