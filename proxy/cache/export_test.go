package cache

// Size is the weight the Memory store gives e, beside its key.
func Size(e *Entry) int { return e.size() }

// PurgeRecords counts the key and prefix purge records m keeps.
func PurgeRecords(m *Memory) (keys, prefixes int) {
	m.records.mu.RLock()
	defer m.records.mu.RUnlock()
	return len(m.records.keys), len(m.records.prefixes)
}
