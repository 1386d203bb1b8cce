"""Generated protobuf/gRPC stubs for the risklens.v1 API (built from protos/ by setup.py)."""
