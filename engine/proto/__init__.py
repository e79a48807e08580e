"""Generated gRPC stubs of proto/molret/v1/retrieval.proto; regenerate with scripts/gen_proto.sh."""
