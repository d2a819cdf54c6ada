"""Protobuf contracts shared by streams, serving, training and ingest.

The generated modules (`events_pb2`, `recommender_pb2`, `recommender_pb2_grpc`) are
committed; regenerate them with `python -m protos.generate`.
"""
