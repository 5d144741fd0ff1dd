"""cuda:cupy backend (CuPy RawKernels / cuBLAS): not implemented yet, so not registered as a plugin."""
