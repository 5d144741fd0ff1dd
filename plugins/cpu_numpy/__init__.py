"""cpu_numpy"""
