"""Task data turned into training batches: episodes -> windows -> (prefetched) batches."""
