"""The event-time detector: training-shaped use, FLOP accounting, tenant opacity."""
