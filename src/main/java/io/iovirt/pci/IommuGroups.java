// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/** The host's IOMMU groups (kernel/iommu_groups/N/devices): the unit of isolation VFIO hands to a guest. */
public final class IommuGroups {
    /**
     * One group.
     *
     * @param members device names in the group: PCI addresses, or other bus names on platforms that have them
     * @param type the default domain type (DMA, DMA-FQ, identity, blocked), or null on old kernels
     */
    public record Group(int number, List<String> members, String type) {
        public Group {
            members = List.copyOf(members);
        }
    }

    private final Map<Integer, Group> groups;

    private IommuGroups(Map<Integer, Group> groups) {
        this.groups = Collections.unmodifiableMap(groups);
    }

    public static IommuGroups read(SysfsTree sys) {
        Map<Integer, Group> groups = new TreeMap<>();
        for (String name : sys.list("kernel/iommu_groups")) {
            if (name.isEmpty() || name.length() > 9 || !name.chars().allMatch(Character::isDigit)) {
                continue;
            }
            int n = Integer.parseInt(name);
            String dir = "kernel/iommu_groups/" + name;
            List<String> members = new ArrayList<>(sys.list(dir + "/devices"));
            members.sort((a, b) -> {
                Bdf x = Bdf.tryParse(a);
                Bdf y = Bdf.tryParse(b);
                return x != null && y != null ? x.compareTo(y) : a.compareTo(b);
            });
            groups.put(n, new Group(n, members, sys.readOptional(dir + "/type").orElse(null)));
        }
        return new IommuGroups(groups);
    }

    public Map<Integer, Group> all() {
        return groups;
    }

    public Group group(int n) {
        return groups.get(n);
    }

    public int count() {
        return groups.size();
    }

    /** Group members other than {@code bdf}; for a device without a group, none. */
    public List<String> peers(int group, Bdf bdf) {
        Group g = groups.get(group);
        if (g == null) {
            return List.of();
        }
        List<String> peers = new ArrayList<>(g.members());
        peers.remove(bdf.toString());
        return peers;
    }
}
