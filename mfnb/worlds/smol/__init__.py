"""The `smol` world: SmolLM2-135M-Instruct on CPU, IFEval-style verifiable instructions, best-of-k experts
(see README.md)."""
