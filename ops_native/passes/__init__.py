"""Graph passes of the compiler, in the order it runs them: folding (constant subgraphs), fusions (merged
nodes), layout (NCHWc8 tensors between convolutions, conv + residual)."""
