"""The server's process lifecycle, outside Triton: start tritonserver (embedded), supervise and drain it,
check its health, lay out the split deployment. Nothing here is imported by a model inside Triton."""
