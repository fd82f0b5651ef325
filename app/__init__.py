"""FastAPI service and scheduler daemon of the VM deployment kit."""
