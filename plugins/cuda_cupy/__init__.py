"""cuda_cupy"""
