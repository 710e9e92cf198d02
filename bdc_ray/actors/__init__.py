"""Ray actors: thin hosts for models and pools; the method lives in bdc_ray."""
