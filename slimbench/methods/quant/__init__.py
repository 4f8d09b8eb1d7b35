"""Weight (and weight-activation) quantization methods that store packed integers."""
