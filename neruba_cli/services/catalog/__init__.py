"""The pricing catalog, plan quotes and subscriptions to plan versions."""
