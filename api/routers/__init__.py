"""One router per resource: apps, inference, schedule, models, health and metrics."""
