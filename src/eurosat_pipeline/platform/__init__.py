"""The machine a run lands on: which accelerator, precision and compile setting it gets, what
the CPU can do natively (bf16, threads), NVIDIA GPU discovery without CUDA, and the placement of
a run or a queue of runs on devices and cores (placement, with the GPU locks in slots).

Beside ``core``, below everything that trains or infers: one place decides devices and threads.
"""
