package cache

// Size is the weight the Memory store gives e, beside its key.
func Size(e *Entry) int { return e.size() }
