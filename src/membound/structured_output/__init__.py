"""Structured outputs: grammars compiled by xgrammar, applied as a per-row token mask.

``grammar.GrammarCompiler`` turns a ``StructuredOutputsParams`` into a compiled grammar (and
refuses what it cannot compile, naming the problem); ``manager.StructuredOutputManager`` keeps
one matcher per constrained request on the engine side, fills each step's allowed-token
bitmasks for the rows that sample, and advances the matchers on the accepted tokens. The
sampler only sees the bitmasks (``SamplingMetadata.allowed_mask``). xgrammar is imported
the first time a grammar is compiled (``pip install 'membound[structured]'``).
"""
