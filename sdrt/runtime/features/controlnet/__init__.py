"""ControlNet: exported ControlNets, their units, preprocessors and residual feeds."""
