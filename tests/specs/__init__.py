"""One ``SPEC`` (shallowkern.testing.OpSpec) per op: the contract suite and the fuzzer read them."""
