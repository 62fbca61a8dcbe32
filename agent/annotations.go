package agent

import (
	"context"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"github.com/calyx-net/calyx/ipam/plugin"
)

// metaCache is the metadata of the node's pods and of the cluster's
// namespaces, for the annotation reads of the IPAM the agent serves
// (plugin.Cache): a pod start then waits for no API round trip. Only
// calyx.dev/ annotations are kept.
type metaCache struct {
	pods, namespaces cache.SharedIndexInformer
}

var _ plugin.Cache = (*metaCache)(nil)

func newMetaCache(md metadata.Interface, node string) *metaCache {
	onNode := func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	}
	c := &metaCache{
		pods:       metadatainformer.NewFilteredMetadataInformer(md, plugin.PodsResource, metav1.NamespaceAll, 0, cache.Indexers{}, onNode).Informer(),
		namespaces: metadatainformer.NewFilteredMetadataInformer(md, plugin.NamespacesResource, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer(),
	}
	for _, inf := range []cache.SharedIndexInformer{c.pods, c.namespaces} {
		_ = inf.SetTransform(trimMeta) // fails only once the informer runs
	}
	return c
}

// run feeds the caches until ctx ends. Until they have synced, every read
// goes to the API server.
func (c *metaCache) run(ctx context.Context) {
	go c.pods.RunWithContext(ctx)
	go c.namespaces.RunWithContext(ctx)
}

// trimMeta keeps what the annotation reads need: the key, the UID and the
// calyx.dev/ annotations (not kubectl's last-applied copy of every pod).
func trimMeta(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil // a tombstone
	}
	var ann map[string]string
	for k, v := range m.Annotations {
		if strings.HasPrefix(k, "calyx.dev/") {
			if ann == nil {
				ann = map[string]string{}
			}
			ann[k] = v
		}
	}
	return &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Annotations: ann,
	}}, nil
}

func (c *metaCache) Pod(namespace, name string) (string, map[string]string, bool) {
	m, ok := lookup(c.pods, namespace+"/"+name)
	if !ok {
		return "", nil, false
	}
	return string(m.UID), m.Annotations, true
}

func (c *metaCache) Namespace(name string) (map[string]string, bool) {
	m, ok := lookup(c.namespaces, name)
	if !ok {
		return nil, false
	}
	return m.Annotations, true
}

func lookup(inf cache.SharedIndexInformer, key string) (*metav1.PartialObjectMetadata, bool) {
	if !inf.HasSynced() {
		return nil, false
	}
	obj, ok, err := inf.GetStore().GetByKey(key)
	if err != nil || !ok {
		return nil, false
	}
	m, ok := obj.(*metav1.PartialObjectMetadata)
	return m, ok
}
