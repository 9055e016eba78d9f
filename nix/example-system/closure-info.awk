# Turns the `closure` of exportReferencesGraph (in a structured-attrs JSON
# file) into closure-info's store-paths, registration and total-nar-size,
# written into the directory `out`. The closure is a list of flat objects
# whose values are numbers, booleans, strings without escapes (store paths,
# hashes) or lists of such strings, which is all this parser handles.
{ json = json $0 }
END {
  start = index(json, "\"closure\":[{")
  if (start == 0) { print "closure-info: no closure in the attrs JSON" > "/dev/stderr"; exit 1 }
  rest = substr(json, start + length("\"closure\":[{"))
  stop = index(rest, "}]")
  body = substr(rest, 1, stop - 1)
  n = split(body, objects, /\},\{/)
  total = 0
  registration = ""
  paths = ""
  for (i = 1; i <= n; i++) {
    o = objects[i]
    path = field(o, "path"); hash = field(o, "narHash"); size = number(o, "narSize")
    refs = ""; count = 0
    if (match(o, /"references":\[[^]]*\]/)) {
      list = substr(o, RSTART + 14, RLENGTH - 15)
      gsub(/"/, "", list)
      if (list != "") count = split(list, r, ",")
      for (j = 1; j <= count; j++) refs = refs r[j] "\n"
    }
    paths = paths path "\n"
    registration = registration path "\n" hash "\n" size "\n\n" count "\n" refs
    total += size
  }
  printf "%s", paths > (out "/store-paths")
  printf "%s", registration > (out "/registration")
  printf "%d\n", total > (out "/total-nar-size")
}
function field(o, key) {
  if (!match(o, "\"" key "\":\"[^\"]*\"")) { print "closure-info: no " key " in " o > "/dev/stderr"; exit 1 }
  return substr(o, RSTART + length(key) + 4, RLENGTH - length(key) - 5)
}
function number(o, key) {
  if (!match(o, "\"" key "\":[0-9]+")) { print "closure-info: no " key " in " o > "/dev/stderr"; exit 1 }
  return substr(o, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
}
