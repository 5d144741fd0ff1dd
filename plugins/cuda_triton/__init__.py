"""cuda_triton"""
