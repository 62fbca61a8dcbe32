package ipam

// Labels on IPAMBlock and IPAMHandle objects, so that a node's blocks and
// handles can be listed without reading everyone else's.
const (
	LabelNode = "calyx.dev/node"
	LabelPool = "calyx.dev/pool"
)
