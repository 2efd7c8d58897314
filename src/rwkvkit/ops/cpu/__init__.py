"""The compiled CPU tier of the operators (``impl="kernel"``).

* :mod:`.build`: compiling a C++ extension on first use (shared with the matrix-vector kernel of
  :mod:`rwkvkit.inference.kernels`);
* :mod:`.wkv_seq` (+ ``wkv_seq.cpp``): the sequential WKV recurrences of RWKV-4..7, loaded once per
  process. The operators that call them sit beside the other tiers of each version:
  :func:`rwkvkit.ops.rwkv7.kernel.wkv7_kernel`, :func:`rwkvkit.ops.rwkv6.kernel.wkv6_kernel` /
  ``wkv5_kernel``, :func:`rwkvkit.ops.rwkv4.kernel.wkv4_kernel`.

Nothing here imports the other tiers, so every version package can import this one.
"""
