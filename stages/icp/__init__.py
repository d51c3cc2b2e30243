"""In-Context Pretraining (spec icp.md): the stages (`stages`); kNN, graph, walk, packing and metrics
on arrays (`core`); the kNN as a Beam pipeline (`beam_knn`)."""
