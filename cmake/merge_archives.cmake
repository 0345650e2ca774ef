# cmake -DAR=ar -DMRI=script.mri -P merge_archives.cmake: runs GNU ar's MRI script (CREATE, ADDLIB
# ..., SAVE), which merges static archives into one; fails the build when ar does.
execute_process(COMMAND ${AR} -M INPUT_FILE ${MRI} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${AR} -M ${MRI} failed (${rc}): ${err}")
endif()
