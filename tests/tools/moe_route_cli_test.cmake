# SPDX-License-Identifier: Apache-2.0
# End-to-end test of moe-route on the checkpoint that moe_route_fixture wrote into DIR: every
# option, the JSON against the checked-in schema, and the exit codes of bad arguments and bad files.
# cmake -DROUTE=... -DFIXTURE=... -DSCHEMA=... -DDIR=... -P moe_route_cli_test.cmake
set(failures 0)
# run(<expected exit code> <regex the output must match> args...)
function(run expected regex)
  execute_process(COMMAND ${ROUTE} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(last_out "${out}" PARENT_SCOPE)
  set(last_err "${err}" PARENT_SCOPE)
  string(REPLACE ";" " " args "${ARGN}")
  if(NOT rc STREQUAL "${expected}")
    message(SEND_ERROR "moe-route ${args}: exit ${rc}, expected ${expected}\n${out}\n${err}")
    math(EXPR f "${failures} + 1")
    set(failures ${f} PARENT_SCOPE)
  elseif(NOT "${out}${err}" MATCHES "${regex}")
    message(SEND_ERROR "moe-route ${args}: output does not match '${regex}'\n${out}\n${err}")
    math(EXPR f "${failures} + 1")
    set(failures ${f} PARENT_SCOPE)
  else()
    message(STATUS "ok (exit ${rc}): moe-route ${args}")
  endif()
endfunction()
function(validate file)
  execute_process(COMMAND ${FIXTURE} validate ${SCHEMA} ${file} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(SEND_ERROR "${file} is not valid against ${SCHEMA}:\n${out}${err}")
  else()
    message(STATUS "${out}")
  endif()
endfunction()
function(expect_json file expected)
  file(READ ${file} doc)
  set(path ${ARGN})
  list(GET path -1 last)
  if(last STREQUAL "LENGTH")
    list(REMOVE_AT path -1)
    string(JSON value LENGTH "${doc}" ${path})
  else()
    string(JSON value GET "${doc}" ${path})
  endif()
  if(NOT value EQUAL expected)
    string(REPLACE ";" "." at "${ARGN}")
    message(SEND_ERROR "${file}: ${at} is ${value}, expected ${expected}")
  endif()
endfunction()

set(ck ${DIR}/model.safetensors)
set(all_policies --policy top_k:k=2 --policy top_k:k=1,renormalize=1,temperature=2,gate=sigmoid
  --policy null_experts:m=2,k=3,renormalize=0,temperature=1 --policy capacity:factor=1.0,convention=switch,drop=1,k=2,renormalize=1,temperature=1
  --policy capacity:factor=0.5 --policy expert_choice:factor=2,convention=floor --policy top_p:p=0.6,k_min=1,k_max=4,renormalize=1
  --policy adaptive_k:k_min=1,k_max=4,low=0.5,high=0.9,renormalize=0 --policy mod:capacity=0.5,seed=3,k=2,renormalize=0,temperature=1)

# Every policy on every layer of the checkpoint, hidden states from a file, JSON and report.
run(0 "policy top_k:k=2" --checkpoint ${ck} --hidden ${DIR}/hidden.safetensors --hidden-name hidden_states --layers all
  ${all_policies} --json ${DIR}/all.json --report ${DIR}/report.html --report-tokens 16 --threads 2 --quiet)
validate(${DIR}/all.json)
# stderr is not a terminal here: no progress, nothing on stderr.
if(NOT last_err STREQUAL "")
  message(SEND_ERROR "moe-route printed on stderr although stderr is not a terminal:\n${last_err}")
endif()
expect_json(${DIR}/all.json 10 policies LENGTH)
expect_json(${DIR}/all.json 24 tokens)
expect_json(${DIR}/all.json 2 layers LENGTH)
# The model's own router against itself, and top_k with the model's k (OLMoE: softmax, no
# renormalisation): the same routing, bit for bit the same output.
expect_json(${DIR}/all.json 1 policies 0 summary jaccard)
expect_json(${DIR}/all.json 1 policies 1 summary jaccard)
expect_json(${DIR}/all.json 0 policies 1 summary output_rel_error)
expect_json(${DIR}/all.json 2 policies 1 summary experts_per_token)
# mod:capacity=0.5 skips half of the 24 tokens in each of the 2 layers.
expect_json(${DIR}/all.json 24 policies 9 summary skipped)
# capacity:factor=0.5 drops assignments.
file(READ ${DIR}/all.json doc)
string(JSON dropped GET "${doc}" policies 5 summary dropped)
if(NOT dropped GREATER 0)
  message(SEND_ERROR "capacity:factor=0.5 dropped ${dropped} assignments, expected some")
endif()

# The checkpoint as a directory, per-layer hidden states, one layer, a range, a list, bf16, route only.
run(0 "layers: 1" --checkpoint ${DIR} --hidden ${DIR}/hidden.safetensors --hidden-name "hidden.{layer}" --layers 1 --policy top_k:k=1 -q)
run(0 "layers: 0 1" --checkpoint ${DIR} --hidden ${DIR}/hidden.safetensors --hidden-name "hidden.{layer}" --layers 0-1 --policy top_k:k=1 --bf16)
run(0 "out_err.*n/a" --checkpoint ${DIR} --tokens 40 --seed 7 --layers "1,0" --policy top_p --route-only --json ${DIR}/route_only.json)
validate(${DIR}/route_only.json)
expect_json(${DIR}/route_only.json 40 tokens)
# A synthetic model from a preset.
run(0 "synthetic switch_transformer" --preset switch_transformer --experts 4 --dim 16 --ffn 8 --num-layers 3 --tokens 32 --seed 2
  --policy top_k:k=2 --json ${DIR}/synthetic.json)
validate(${DIR}/synthetic.json)
expect_json(${DIR}/synthetic.json 3 layers LENGTH)
run(0 "synthetic olmoe" --dim 16 --ffn 8 --num-layers 1 --tokens 8)
# Capture the model's own routing, then replay it (issue: routed-expert capture and replay): the
# replayed experts are the model's (Jaccard 1) and, with live weights over OLMoE's top_k softmax or
# with the recorded weights, the layer outputs are the model's bit for bit (output error 0).
run(0 "model" --checkpoint ${DIR} --tokens 24 --seed 3 --capture ${DIR}/routes.safetensors -q)
if(NOT EXISTS ${DIR}/routes.safetensors)
  message(SEND_ERROR "--capture wrote no ${DIR}/routes.safetensors")
  math(EXPR failures "${failures} + 1")
endif()
foreach(weights live recorded)
  run(0 "replay" --checkpoint ${DIR} --tokens 24 --seed 3 --replay ${DIR}/routes.safetensors --replay-weights ${weights}
    --json ${DIR}/replay_${weights}.json -q)
  validate(${DIR}/replay_${weights}.json)
  file(READ ${DIR}/replay_${weights}.json doc)
  string(JSON name GET "${doc}" policies 1 name)
  if(NOT name STREQUAL "replay")
    message(SEND_ERROR "replay_${weights}.json: policies.1.name is ${name}, expected replay")
    math(EXPR failures "${failures} + 1")
  endif()
  expect_json(${DIR}/replay_${weights}.json 1 policies 1 summary jaccard)
  expect_json(${DIR}/replay_${weights}.json 0 policies 1 summary output_rel_error)
endforeach()
# Other hidden states under the same recording: the same experts, other live weights.
run(0 "replay" --checkpoint ${DIR} --tokens 24 --seed 4 --replay ${DIR}/routes.safetensors --json ${DIR}/replay_other.json -q)
file(READ ${DIR}/replay_other.json doc)
string(JSON other GET "${doc}" policies 1 summary output_rel_error)
if(other EQUAL 0)
  message(SEND_ERROR "a replay over other hidden states gave the model's outputs exactly")
  math(EXPR failures "${failures} + 1")
endif()
run(1 "\\[moe.error.*x.rows\\(\\)" --checkpoint ${DIR} --tokens 10 --seed 3 --replay ${DIR}/routes.safetensors -q)
run(1 "\\[moe.error" --checkpoint ${DIR} --tokens 24 --replay ${DIR}/bad/model.safetensors -q)
run(2 "replay-weights" --checkpoint ${DIR} --tokens 24 --replay ${DIR}/routes.safetensors --replay-weights sometimes)

# Help and the policy list.
run(0 "--checkpoint.*--preset.*--hidden.*--hidden-name.*--tokens.*--layers.*--policy.*--route-only.*--capture.*--replay.*--replay-weights.*--json.*--report.*--quiet.*null_experts" --help)
run(0 "top_k.*null_experts.*capacity.*expert_choice.*top_p.*adaptive_k.*mod" --list-policies)

# Usage errors: exit 2 with a message that says what is valid.
run(2 "unknown policy 'bogus'; valid policies: top_k, null_experts" --checkpoint ${ck} --policy bogus)
run(2 "has no option 'q'; valid options: k, renormalize, temperature, gate" --checkpoint ${ck} --policy top_k:q=1)
run(2 "option 'k' must be a number" --checkpoint ${ck} --policy top_k:k=many)
run(2 "must be written key=value" --checkpoint ${ck} --policy top_k:k)
run(2 "option 'gate' must be one of softmax, sigmoid" --checkpoint ${ck} --policy top_k:gate=relu)
run(2 "layer 5 is not a MoE layer of the model; MoE layers: 0,1" --checkpoint ${ck} --layers 5)
run(2 "is not a layer number" --checkpoint ${ck} --layers one)
run(2 "excludes" --checkpoint ${ck} --tokens 4 --hidden ${DIR}/hidden.safetensors)
run(2 "describe a synthetic model" --checkpoint ${ck} --dim 64)
run(2 "unknown preset 'gpt5'; valid presets: olmoe" --preset gpt5)
run(2 "not expected" --checkpoint ${ck} --frobnicate)
run(2 "does not exist|File does not exist" --checkpoint ${ck} --hidden ${DIR}/no_such_file.safetensors)
# Runtime errors: exit 1 with the moe::error message.
run(1 "\\[moe.error.input\\].*cannot open" --checkpoint ${DIR}/no_such_model.safetensors)
run(1 "\\[moe.error" --checkpoint ${DIR}/bad/model.safetensors)
run(1 "\\[moe.error.shape\\].*last dimension.*32.*7" --checkpoint ${ck} --hidden ${DIR}/hidden.safetensors --hidden-name narrow)
run(1 "\\[moe.error.input\\].*tensor.*hidden_states.*missing_name" --checkpoint ${ck} --hidden ${DIR}/hidden.safetensors --hidden-name missing_name)
run(1 "\\[moe.error.config\\].*'k'" --checkpoint ${ck} --policy top_k:k=99)

if(failures GREATER 0)
  message(FATAL_ERROR "${failures} moe-route runs failed")
endif()
