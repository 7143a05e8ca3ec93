#!/usr/bin/env python3
"""Validates the gateway's FHIR output with an outside library and the profile rules.

Usage: fhir_validate.py [--definitions DIR] FILE [FILE ...]

Each FILE holds JSON resources, one per line (a Bundle's entries are checked one by one as
well); `-` reads standard input. Two kinds of check, reported apart:

1. validator: every resource (and the Bundle around it) is parsed by `fhir.resources` 6.1.0,
   the FHIR R4 (4.0.1) models of that maintained library (pydantic): element names, types and
   cardinalities, primitive formats (id, instant, dateTime, decimal, uri, code), required
   elements and choice types. Not our code.
2. profile: the rules of the profiles each resource claims in meta.profile, as the HL7
   Point-of-Care Device guide and the FHIR R4 vital-signs profiles state them, checked here
   (fhir.resources does not read profiles): meta.profile present; ids `[A-Za-z0-9-.]{1,64}`;
   Observation status from the R4 value set; category present; an MDC coding; a subject that is
   a Patient or (PoCD) a Device; a value, a data-absent reason or components; for a vital-signs
   profile: category vital-signs, subject a Patient, an effective time, the LOINC code that
   profile fixes, a UCUM quantity in an allowed unit; for the bp profile: components 8480-6 and
   8462-4 in mm[Hg]; every extension url is one whose StructureDefinition is published in
   DIR (default cloud-bridge/fhir) with the value type it declares; referenceRange is typed;
   for a waveform (PoCD SampleArrayObservation, valueSampledData): a device, a UCUM origin,
   dimensions 1, data tokens that are numbers or E/L/U (L and U only with lowerLimit /
   upperLimit), and the extensions of the SampledData published too; in a Bundle, every
   `urn:uuid:` reference (a DiagnosticReport's results) is the fullUrl of one of its entries.

Prints one line per problem (`FILE:LINE resource-id: [validator|profile] what`) and a summary
`checked N resources: E errors`; exits 1 when there is any error, 2 on a usage error.
"""

import argparse
import json
import os
import re
import sys

try:
    from fhir.resources import construct_fhir_element
except ImportError as e:  # pragma: no cover
    print(f"fhir.resources (R4, 6.1.0) is not importable: {e}", file=sys.stderr)
    sys.exit(2)

ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
STATUSES = {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
            "entered-in-error", "unknown"}
VS = "http://hl7.org/fhir/StructureDefinition/"
# profile -> (the LOINC code it fixes, or None for the base profile; allowed UCUM units)
VITALS = {
    VS + "vitalsigns": (None, None),
    VS + "heartrate": ("8867-4", {"/min"}),
    VS + "oxygensat": ("2708-6", {"%"}),
    VS + "resprate": ("9279-1", {"/min"}),
    VS + "bodytemp": ("8310-5", {"Cel", "[degF]"}),
    VS + "bodyweight": ("29463-7", {"kg", "g", "[lb_av]"}),
    VS + "bodyheight": ("8302-2", {"cm", "[in_i]"}),
    VS + "bp": ("85354-9", None),
}
# The R4 vital-signs value set's members that the base profile is claimed for here.
VITAL_CODES = {"8867-4", "8889-8", "2708-6", "59408-5", "9279-1", "8310-5", "8329-5",
               "29463-7", "8302-2", "8480-6", "8462-4", "8478-0", "85354-9"}


def load_definitions(directory):
    """url -> value[x] type of every published extension StructureDefinition."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            doc = json.load(f)
        construct_fhir_element(doc["resourceType"], doc)  # the definitions are valid R4 too
        if doc.get("resourceType") == "StructureDefinition" and doc.get("type") == "Extension":
            for el in doc["differential"]["element"]:
                if el["path"] == "Extension.value[x]":
                    out[doc["url"]] = el["type"][0]["code"]
    return out


def codings(concept, system=None):
    return [c for c in (concept or {}).get("coding") or []
            if system is None or c.get("system") == system]


def profile_problems(res, definitions):
    """The profile rules this resource breaks."""
    p = []
    kind = res.get("resourceType")
    rid = res.get("id")
    if kind != "Bundle":
        if not rid or not ID.match(rid):
            p.append(f"id {rid!r} is no FHIR id")
        profiles = (res.get("meta") or {}).get("profile") or []
        if not profiles:
            p.append("no meta.profile")
    else:
        profiles = []
    p.extend(extension_problems(res.get("extension"), definitions))
    if kind == "Observation":
        p.extend(observation_problems(res, profiles))
        if "valueSampledData" in res:
            p.extend(sampled_data_problems(res, profiles, definitions))
    if kind == "Bundle":
        p.extend(reference_problems(res))
    if kind == "Encounter" and not str((res.get("subject") or {}).get("reference", "")).startswith("Patient/"):
        p.append("Encounter.subject must be a Patient")
    if kind == "Patient" and not res.get("identifier"):
        p.append("Patient without identifier")
    if kind == "Device":
        p.extend(device_problems(res, profiles))
    if kind == "DeviceMetric":
        if not codings(res.get("type"), MDC):
            p.append("PoCD: DeviceMetric.type has no MDC coding")
        if not str((res.get("source") or {}).get("reference", "")).startswith("Device/"):
            p.append("PoCD: DeviceMetric.source must be the Device")
    return p


POCD = "http://hl7.org/fhir/uv/pocd/StructureDefinition/"
TOKEN = re.compile(r"^(E|L|U|-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?)$")


def extension_problems(extensions, definitions):
    p = []
    for ext in extensions or []:
        url = ext.get("url", "")
        want = definitions.get(url)
        if want is None:
            p.append(f"extension {url} has no published StructureDefinition")
            continue
        key = "value" + want[0].upper() + want[1:]
        if key not in ext:
            p.append(f"extension {url} must carry {key}")
    return p


def sampled_data_problems(o, profiles, definitions):
    """A waveform Observation: the SampledData rules and PoCD SampleArrayObservation."""
    p = []
    sd = o["valueSampledData"]
    p.extend(extension_problems(sd.get("extension"), definitions))
    if POCD + "SampleArrayObservation" in profiles:
        if not str((o.get("device") or {}).get("reference", "")).startswith("Device/"):
            p.append("SampleArrayObservation: no device")
        origin = sd.get("origin") or {}
        if origin.get("system") != UCUM or not origin.get("code"):
            p.append("SampleArrayObservation: origin is not a UCUM quantity")
    if sd.get("dimensions") != 1:
        p.append(f"SampledData.dimensions {sd.get('dimensions')!r}, expected 1 (one channel)")
    tokens = sd.get("data", "").split(" ") if sd.get("data") else []
    bad = [t for t in tokens if not TOKEN.match(t)]
    if bad:
        p.append(f"SampledData.data has {len(bad)} tokens that are no number, E, L or U: {bad[:3]}")
    if "L" in tokens and "lowerLimit" not in sd:
        p.append("SampledData.data has L without lowerLimit")
    if "U" in tokens and "upperLimit" not in sd:
        p.append("SampledData.data has U without upperLimit")
    return p


def reference_problems(bundle):
    """Every urn:uuid reference inside a Bundle names one of its entries."""
    urls = {e.get("fullUrl") for e in bundle.get("entry") or []}
    p = []

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref.startswith("urn:uuid:") and ref not in urls:
                p.append(f"reference {ref} is no entry of the Bundle")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for e in bundle.get("entry") or []:
        walk(e.get("resource"))
    return p


def device_problems(d, profiles):
    p = []
    if not d.get("type"):
        p.append("PoCD: Device.type missing")
    if d.get("patient") or d.get("location"):
        p.append("PoCD: a device component has no patient or location")
    if POCD + "MdsDevice" in profiles:
        if not d.get("identifier"):
            p.append("MdsDevice: no identifier")
        for i in d.get("identifier") or []:
            if i.get("system") == "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680" and \
                    not re.match(r"^[0-9A-Fa-f]{16}$", i.get("value", "")):
                p.append(f"MdsDevice: EUI-64 {i.get('value')!r} is not 16 hex digits")
    if (POCD + "VmdDevice" in profiles or POCD + "ChannelDevice" in profiles) and \
            not str((d.get("parent") or {}).get("reference", "")).startswith("Device/"):
        p.append("PoCD: a VMD or channel Device needs its parent")
    return p


def observation_problems(o, profiles):
    p = []
    if o.get("status") not in STATUSES:
        p.append(f"status {o.get('status')!r} is not in the R4 ObservationStatus value set")
    if not o.get("category"):
        p.append("no category")
    subject = str((o.get("subject") or {}).get("reference", ""))
    if not (subject.startswith("Patient/") or subject.startswith("Device/")):
        p.append("PoCD: subject must be the Patient or the Device")
    has_value = any(k.startswith("value") for k in o) or "dataAbsentReason" in o or o.get("component")
    if not has_value:
        p.append("PoCD/vs-2: no value, dataAbsentReason or component")
    loincs = {c.get("code") for c in codings(o.get("code"), LOINC)}
    if not codings(o.get("code"), MDC) and "85354-9" not in loincs:
        p.append("PoCD: code has no MDC coding")
    for rr in o.get("referenceRange") or []:
        if not rr.get("type"):
            p.append("referenceRange without type (would read as a normal range)")
    categories = {c.get("code") for cat in o.get("category") or [] for c in codings(cat, CATEGORY)}
    if loincs & VITAL_CODES and "vital-signs" not in categories:
        p.append("a vital-signs code without category vital-signs")
    for prof in [x for x in profiles if x in VITALS]:
        fixed, units = VITALS[prof]
        if "vital-signs" not in categories:
            p.append(f"{prof}: category vital-signs missing")
        if not subject.startswith("Patient/"):
            p.append(f"{prof}: subject must be a Patient")
        if not (o.get("effectiveDateTime") or o.get("effectivePeriod")):
            p.append(f"{prof}: no effective time")
        if not loincs:
            p.append(f"{prof}: code has no LOINC coding")
        if fixed and fixed not in loincs:
            p.append(f"{prof}: code must have LOINC {fixed}")
        q = o.get("valueQuantity")
        if q is not None:
            if q.get("system") != UCUM or not q.get("code"):
                p.append(f"{prof}: valueQuantity is not a UCUM quantity")
            elif units and q.get("code") not in units:
                p.append(f"{prof}: unit {q.get('code')!r} is not one of {sorted(units)}")
        if prof == VS + "bp":
            comps = {}
            for comp in o.get("component") or []:
                for c in codings(comp.get("code"), LOINC):
                    comps[c.get("code")] = comp
            for code in ("8480-6", "8462-4"):
                comp = comps.get(code)
                if comp is None:
                    p.append(f"{prof}: no component {code}")
                elif (comp.get("valueQuantity") or {}).get("code") != "mm[Hg]" and "dataAbsentReason" not in comp:
                    p.append(f"{prof}: component {code} is not in mm[Hg]")
    return p


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--definitions", default=os.path.join(here, "..", "cloud-bridge", "fhir"))
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    definitions = load_definitions(args.definitions)
    checked = errors = 0
    for path in args.files:
        f = sys.stdin if path == "-" else open(path, encoding="utf-8")
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            resources = [doc] + [e.get("resource") or {} for e in doc.get("entry") or []] \
                if doc.get("resourceType") == "Bundle" else [doc]
            try:
                construct_fhir_element(doc.get("resourceType"), doc)
            except Exception as e:  # pydantic's ValidationError and friends
                errors += 1
                detail = " / ".join(str(e).splitlines()[1:])[:500]
                print(f"{path}:{n} {doc.get('id')}: [validator] {detail}")
            for res in resources:
                checked += 1
                for problem in profile_problems(res, definitions):
                    errors += 1
                    print(f"{path}:{n} {res.get('resourceType')}/{res.get('id')}: [profile] {problem}")
    print(f"checked {checked} resources against FHIR R4 (fhir.resources) and the profiles: {errors} errors")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
