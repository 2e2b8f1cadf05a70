"""Graph passes of the compiler, in the order it runs them: folding (constant subgraphs), prelu (a uniform-slope
PRelu becomes a fusable LeakyRelu), fusions (merged nodes), layout (NCHWc8 tensors between convolutions, conv +
residual)."""
