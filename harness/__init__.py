"""kconform: a pytest plugin that checks documented kernel behaviour on real kernels under QEMU."""
