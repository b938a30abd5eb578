"""Change between two dates: two scenes of one place mapped with the same model and settings, aligned,
and cross-tabulated into from-to transitions, with the change that classifier error alone would show."""
