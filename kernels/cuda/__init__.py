"""CUDA kernels (numba.cuda): the GPU twins of ``fastlstm.kernels.cpu``.

``recurrence``  step kernels (multi-launch path) and the persistent whole-sequence kernel
``gemm``        tiled shared-memory GEMM, column sums, and the optional CuPy (cuBLAS) path
``elementwise`` small layout/cast/mask kernels
``lstm``        the orchestrator called by ``fastlstm.forward`` / ``fastlstm.backward``

Importing this package never touches the GPU; ``lstm`` imports ``numba.cuda`` lazily.
"""
