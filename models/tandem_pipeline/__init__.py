"""tandem's offline pipeline: synthetic world, embeddings, ranking model, evaluation."""
