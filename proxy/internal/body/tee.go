package body

import "io"

// Tee keeps a copy of what is read through it, within kept's limit
// and budget, and hands the copy to done at a clean end of the body. A
// body cut short never reaches done. The copy's reservation is released
// when it is handed over, given up, or the body is closed.
type Tee struct {
	io.ReadCloser
	kept Buffer
	over bool
	done func(body []byte)
}

// NewTee returns rc with a copy kept, of a body of declared length size
// (0 when unknown), at most limit bytes held against budget; nil when the
// budget has no room for a body of that length now: the body only streams
// then.
func NewTee(rc io.ReadCloser, budget *Budget, limit, size int64, done func(body []byte)) *Tee {
	t := &Tee{ReadCloser: rc, kept: Buffer{budget: budget, limit: limit}, done: done}
	if size > 0 && t.kept.Resize(size) != nil {
		return nil
	}
	return t
}

func (t *Tee) Read(b []byte) (int, error) {
	n, err := t.ReadCloser.Read(b)
	if !t.over && t.kept.write(b[:n]) != nil {
		t.over = true
		t.kept.Release()
	}
	if err == io.EOF && !t.over && t.done != nil {
		t.done(t.kept.Trimmed())
		t.done, t.over = nil, true
		t.kept.Release()
	}
	return n, err
}

func (t *Tee) Close() error {
	t.kept.Release()
	return t.ReadCloser.Close()
}
