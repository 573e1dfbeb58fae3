"""Live capture: `wardwatch run`, its capture workers and the privilege drop."""
