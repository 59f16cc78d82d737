# Fails unless the README's usage example equals the code between the example markers of SOURCE.
file(READ ${SOURCE} _src)
string(REGEX MATCH "// example-begin readme\n(.*)// example-end readme" _ "${_src}")
set(_snippet "${CMAKE_MATCH_1}")
# The snippet is indented by 2 in the test. (No "^" in the pattern: CMake re-anchors "^" after
# every replacement.)
set(_code "\n${_snippet}")
string(REGEX REPLACE "\n  " "\n" _code "${_code}")
file(READ ${README} _readme)
string(FIND "${_readme}" "${_code}" _pos)
if(_snippet STREQUAL "" OR _pos EQUAL -1)
  message(FATAL_ERROR "README.md does not contain the example compiled in ${SOURCE}:\n${_code}")
endif()
