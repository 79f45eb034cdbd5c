module corral

go 1.26.8

require (
	github.com/maypok86/otter/v2 v2.4.0
	github.com/pquerna/cachecontrol v0.2.0
	golang.org/x/sync v0.25.0
)

require (
	github.com/google/go-cmp v0.7.0
	golang.org/x/time v0.16.0
)

require go.uber.org/goleak v1.3.0
