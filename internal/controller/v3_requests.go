package controller

// Request bodies of the v3 API as the cf CLI sends them: the fields
// trellis does not keep are accepted (and ignored) where the CLI always
// sends them, so that its bodies pass the strict decoder.

// v3Lifecycle is how the CLI asks for an app to be built; trellis runs
// what the app's command says, so any lifecycle is taken and ignored.
type v3Lifecycle struct {
	Type string         `json:"type"`
	Data map[string]any `json:"data"`
}

// v3DestinationApp is a destination's app, with the process the CLI names
// (trellis apps have one, web).
type v3DestinationApp struct {
	GUID    string `json:"guid"`
	Process *struct {
		Type string `json:"type"`
	} `json:"process"`
}

// v3Destination is one destination of POST /v3/routes/{guid}/destinations.
type v3Destination struct {
	App      v3DestinationApp `json:"app"`
	Port     *int             `json:"port"`
	Protocol string           `json:"protocol"`
	Weight   *int             `json:"weight"`
}

// v3DestinationsRequest is the body of POST /v3/routes/{guid}/destinations.
type v3DestinationsRequest struct {
	Destinations []v3Destination `json:"destinations"`
}
