"""Native tool calls per model family: syntax as data, one parser, one grammar builder, and
the streamed deltas (docs/models.md)."""
